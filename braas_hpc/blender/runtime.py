"""The main thread's side of the loop bridge: start operations, pump their results back, ask questions.

One timer (`pump`) runs on Blender's main thread while anything is going on: it hands finished
operations to their callbacks, shows the next question from the SSH layer as a popup, starts the jobs
list's refresh when due and redraws the panel. It only copies small results: the longest it can hold
the main thread is what a callback does with them (a few list items), never network or disk work.

In background mode (`blender -b`, scripts) there is no event loop to pump, so `launch` waits for the
operation and reports its outcome the way any Blender operator does. `force_ui` selects the UI branch
there too: the bpy module is always in background mode, and the tests of the UI branch drive its timer
themselves.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import bpy

from ..core.errors import BraasError, HostKeyUnknown
from ..core.transport import pool
from ..core.transport.base import NoPrompts
from .bridge import Bridge, Operation
from .prompting import PromptBroker, Question

ADDON_ID = "braas_hpc"  # the add-on's module name; register() sets the extension's ("bl_ext.<repo>.braas_hpc")
PUMP_INTERVAL_S = 0.1
IDLE_INTERVAL_S = 1.0
force_ui = False  # True: the UI branch even in background mode (whoever sets it runs the timers)


def background() -> bool:
    """No event loop will run the pump: operations wait, questions get no answer."""
    return bool(bpy.app.background) and not force_ui


@dataclass
class Message:
    text: str = ""
    level: str = "INFO"  # INFO, WARNING, ERROR
    at: float = 0.0


@dataclass
class State:
    bridge: Bridge = field(default_factory=Bridge)
    broker: PromptBroker = field(default_factory=lambda: PromptBroker(lambda: not background()))
    message: Message = field(default_factory=Message)
    question: Question | None = None  # shown by the prompt popup, answered there
    host_key: tuple[HostKeyUnknown, Callable[[], None]] | None = None  # waiting for the trust popup
    periodic: list[Callable[[], None]] = field(default_factory=list)  # run by the pump (jobs refresh)


state = State()


def tell(text: str, level: str = "INFO") -> None:
    state.message = Message(text, level, time.time())
    if level == "ERROR" or bpy.app.background:
        print(f"braas-hpc: {level.lower()}: {text}")


def describe(error: BaseException) -> str:
    if isinstance(error, BraasError):
        return str(error)
    # Not one of ours: a bug. Say so, with the trace in the console for the report.
    traceback.print_exception(error)
    return f"internal error ({type(error).__name__}: {error}); details in the system console"


def preferences() -> Any:
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    if addon is None or addon.preferences is None:
        # register() called by hand instead of enabling the add-on: Blender made no preferences for it.
        raise BraasError(f"enable the add-on in Preferences > Add-ons ({ADDON_ID}); its settings are missing")
    return addon.preferences


def launch(operator: bpy.types.Operator, label: str, factory: Callable[[], Awaitable[Any]], kind: str = "",
           on_done: Callable[[Any], None] | None = None, retry: Callable[[], None] | None = None) -> set[str]:
    """Run `factory()` on the loop. UI: returns at once and `on_done(result)` runs later on the main thread.
    Background: waits, runs `on_done`, and turns a failure into the operator's error report."""
    if background():
        operation = state.bridge.run(label, factory, kind)
        try:
            result = operation.result()
            if on_done is not None:
                on_done(result)
        except BaseException as error:  # noqa: BLE001 - every failure becomes the operator's report
            operator.report({"ERROR"}, f"{label}: {describe(error)}")
            return {"CANCELLED"}
        return {"FINISHED"}

    def finished(operation: Operation) -> None:
        _finish(operation, on_done, retry)

    state.bridge.run(label, factory, kind, on_done=finished)
    tell(f"{label}...")
    ensure_pump()
    return {"FINISHED"}


def _finish(operation: Operation, on_done: Callable[[Any], None] | None, retry: Callable[[], None] | None) -> None:
    if operation.cancelled:
        tell(f"{operation.label}: stopped", "WARNING")
        return
    error = operation.error()
    if isinstance(error, HostKeyUnknown) and retry is not None:
        state.host_key = (error, retry)
        _invoke_popup("trust_host")
        return
    if error is not None:
        tell(f"{operation.label}: {describe(error)}", "ERROR")
        return
    tell(f"{operation.label}: done")
    if on_done is not None:
        on_done(operation.result())


def _invoke_popup(name: str) -> None:
    """Popups need a window; a timer has none in its context, so borrow the first one. Never in background
    mode: there a dialog would run its action at once, without anyone saying yes."""
    if bpy.app.background:
        return
    window_manager = bpy.context.window_manager
    if not window_manager or not window_manager.windows:
        return
    window = window_manager.windows[0]
    with bpy.context.temp_override(window=window, screen=window.screen):
        getattr(bpy.ops.braas_hpc, name)("INVOKE_DEFAULT")


def pump() -> float | None:
    """The timer. Returns the delay until the next call (None ends the timer)."""
    for operation in state.bridge.take_finished():
        if operation.on_done is not None:
            try:
                operation.on_done(operation)
            except Exception as error:  # noqa: BLE001 - one bad callback must not stop the timer
                tell(describe(error), "ERROR")
    if state.question is None:
        state.question = state.broker.next_question()
        if state.question is not None:
            _invoke_popup("answer_prompt")
    for task in list(state.periodic):
        task()
    _redraw()
    busy = state.bridge.active() or state.question is not None
    return PUMP_INTERVAL_S if busy else IDLE_INTERVAL_S


def _redraw() -> None:
    window_manager = bpy.context.window_manager
    for window in window_manager.windows if window_manager else ():
        for area in window.screen.areas:
            if area.type in ("PROPERTIES", "PREFERENCES"):
                area.tag_redraw()


def ensure_pump() -> None:
    if not bpy.app.timers.is_registered(pump):
        bpy.app.timers.register(pump, first_interval=PUMP_INTERVAL_S, persistent=True)


def start() -> None:
    pool.prompts = state.broker
    state.bridge.start()
    if not background():
        ensure_pump()


def stop() -> None:
    if bpy.app.timers.is_registered(pump):
        bpy.app.timers.unregister(pump)
    state.broker.refuse_all()
    if pool.prompts is state.broker:  # the interactive add-on may go on without these popups
        pool.prompts = NoPrompts()
    if state.question is not None:
        state.question.answer(None)
        state.question = None
    state.bridge.stop()
    state.periodic.clear()
    state.host_key = None
