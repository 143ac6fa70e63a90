"""The main thread's side: start work on the add-on's loop, pump results back, redraw.

One timer (`pump`) runs on Blender's main thread while the add-on is enabled: it hands finished
operations to their callbacks, copies the followed command's last lines and the viewport link's status
for the panel, and tags the 3D views for redraw when the link has delivered a new frame. It runs at
~30 Hz only while a viewport link is open, 10 Hz while work is going on, else once a second. It never
waits for the network.

In background mode (`blender -b`) there is no event loop to pump, so `launch` waits for the operation
and reports its outcome like any Blender operator (a failure becomes a RuntimeError for scripts).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import bpy

from braas_hpc.blender.bridge import Operation
from braas_hpc.core.errors import AuthenticationFailed, BraasError, HostKeyUnknown
from braas_hpc.core.transport import NoPrompts, pool

from . import links

VIEW_INTERVAL_S = 1 / 30
BUSY_INTERVAL_S = 0.1
IDLE_INTERVAL_S = 1.0


@dataclass
class State:
    message: str = ""
    level: str = "INFO"  # INFO, WARNING, ERROR
    output: list[str] = field(default_factory=list)  # the followed command's last lines (main-thread copy)
    output_version: int = -1
    link_status: str = ""
    drawn_serial: int = -1
    records_loaded: bool = False
    shading: dict[int, str] = field(default_factory=dict)  # 3D view space -> its shading before viewing


state = State()


def tell(text: str, level: str = "INFO") -> None:
    state.message, state.level = text, level
    if level == "ERROR" or bpy.app.background:
        print(f"braas-hpc interactive: {level.lower()}: {text}")


def describe(error: BaseException) -> str:
    if isinstance(error, HostKeyUnknown):
        return f"{error} (compare and trust it with BRaaS-HPC's Test Connections, or `braas-hpc test PRESET`)"
    if isinstance(error, AuthenticationFailed) and isinstance(pool.prompts, NoPrompts):
        # The login popups (key passphrase, one-time code) belong to the BRaaS-HPC add-on.
        return f"{error} (a login that asks for a passphrase or a code needs the BRaaS-HPC add-on enabled)"
    if isinstance(error, BraasError):
        return str(error)
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error}"
    traceback.print_exception(error)  # not one of ours: a bug, with its trace in the console
    return f"internal error ({type(error).__name__}: {error}); details in the system console"


def launch(operator: bpy.types.Operator | None, label: str, factory: Callable[[], Awaitable[Any]], kind: str = "",
           on_done: Callable[[Any], None] | None = None) -> set[str]:
    """Run `factory()` on the loop. UI: returns at once; `on_done(result)` runs later on the main thread.
    Background: waits, then runs `on_done` or turns the failure into the operator's error (`operator` is
    None for a follow-up step started from a callback, whose operator is gone)."""
    if bpy.app.background:
        operation = links.loop.run(label, factory, kind)
        try:
            result = operation.result()
        except BaseException as error:  # noqa: BLE001 - every failure becomes the operator's report
            links.loop.take_finished()  # no pump runs in background mode to hand them out
            if operator is None:
                tell(f"{label}: {describe(error)}", "ERROR")
            else:
                operator.report({"ERROR"}, f"{label}: {describe(error)}")
            return {"CANCELLED"}
        links.loop.take_finished()
        if on_done is not None:
            on_done(result)
        return {"FINISHED"}

    def finished(operation: Operation) -> None:
        if operation.cancelled:
            tell(f"{label}: stopped", "WARNING")
            return
        error = operation.error()
        if error is not None:
            tell(f"{label}: {describe(error)}", "ERROR")
            return
        tell(f"{label}: done")
        if on_done is not None:
            on_done(operation.result())

    links.loop.run(label, factory, kind, on_done=finished)
    tell(f"{label}...")
    return {"FINISHED"}


def busy(kind: str = "") -> list[Operation]:
    return [op for op in links.loop.active(kind) if op.kind != "follow"]


def pump() -> float | None:
    """The timer; returns the delay until its next run."""
    if not state.records_loaded:
        from . import sessions_list

        state.records_loaded = sessions_list.load_records()
    for operation in links.loop.take_finished():
        if operation.on_done is not None:
            try:
                operation.on_done(operation)
            except Exception as error:  # noqa: BLE001 - one bad callback must not stop the timer
                tell(describe(error), "ERROR")
    panel_changed = copy_for_panel()
    serial = links.serial()
    if serial != state.drawn_serial:
        state.drawn_serial = serial
        _tag_redraw(("VIEW_3D",))
    elif panel_changed or busy():
        _tag_redraw(("VIEW_3D",), region="UI")
    if links.current() is not None:
        return VIEW_INTERVAL_S
    return BUSY_INTERVAL_S if links.loop.active() else IDLE_INTERVAL_S


def copy_for_panel() -> bool:
    """Copy what the loop and link threads produced into main-thread state; True if anything changed."""
    version, lines = links.output.snapshot()
    changed = version != state.output_version
    if changed:
        state.output_version, state.output = version, lines
    status = links.describe_link(links.current())
    changed = changed or status != state.link_status
    state.link_status = status
    return changed


def _tag_redraw(area_types: tuple[str, ...], region: str = "") -> None:
    window_manager = bpy.context.window_manager
    for window in window_manager.windows if window_manager else ():
        for area in window.screen.areas:
            if area.type not in area_types:
                continue
            if not region:
                area.tag_redraw()
                continue
            for candidate in area.regions:
                if candidate.type == region:
                    candidate.tag_redraw()


def start() -> None:
    links.loop.start()
    state.records_loaded = False
    if not bpy.app.timers.is_registered(pump):
        bpy.app.timers.register(pump, first_interval=BUSY_INTERVAL_S, persistent=True)


def stop() -> list[str]:
    """Unregister: end the timer, close every link and tunnel, stop the loop. Returns what would not close."""
    if bpy.app.timers.is_registered(pump):
        bpy.app.timers.unregister(pump)
    for operation in links.loop.active("follow"):
        operation.cancel()
    problems = links.close_all()
    links.loop.stop()
    links.output.clear()
    state.output, state.output_version, state.link_status = [], -1, ""
    state.shading.clear()
    for problem in problems:
        print(f"braas-hpc interactive: could not close a tunnel: {problem}")
    return problems


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """For background scripts and tests only: poll `predicate` while pumping, without a window."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pump()
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
