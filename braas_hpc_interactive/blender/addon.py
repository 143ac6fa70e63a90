"""This add-on's part of the toolkit: its runtime (on `links.loop`), its Abort, and what its timer copies
for the sidebar.

Besides handing out finished operations, the timer copies the followed command's last lines and the
viewport link's status for the panel, and tags the 3D views for redraw when the link has delivered a new
frame. It runs at ~30 Hz only while a viewport link is open, 10 Hz while work is going on, else once a
second. It never waits for the network. The login popups belong to BRaaS-HPC's runtime: without that
add-on a login that asks for something fails with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from braas_hpc.addon_kit.operators import abort_operator
from braas_hpc.addon_kit.runtime import Runtime, tag_redraw
from braas_hpc.core.errors import AuthenticationFailed, BraasError, HostKeyUnknown
from braas_hpc.core.transport import NoPrompts, pool

from . import links

NAME = "braas_hpc_interactive"  # the operators' prefix and the properties on Scene and WindowManager


@dataclass
class Panel:
    """What the sidebar shows of the other threads' work, copied on the main thread."""

    output: list[str] = field(default_factory=list)  # the followed command's last lines
    output_version: int = -1
    link_status: str = ""
    drawn_serial: int = -1
    records_loaded: bool = False
    shading: dict[int, str] = field(default_factory=dict)  # 3D view space -> its shading before viewing


panel = Panel()


def _explain(error: BaseException) -> str | None:
    if isinstance(error, HostKeyUnknown):
        return f"{error} (compare and trust it with BRaaS-HPC's Test Connections, or `braas-hpc test PRESET`)"
    if isinstance(error, AuthenticationFailed) and isinstance(pool.prompts, NoPrompts):
        # The login popups (key passphrase, one-time code) belong to the BRaaS-HPC add-on.
        return f"{error} (a login that asks for a passphrase or a code needs the BRaaS-HPC add-on enabled)"
    if isinstance(error, OSError) and not isinstance(error, BraasError):
        return f"{type(error).__name__}: {error}"
    return None


def copy_for_panel() -> bool:
    """Copy what the loop and link threads produced into main-thread state; True if anything changed."""
    version, lines = links.output.snapshot()
    changed = version != panel.output_version
    if changed:
        panel.output_version, panel.output = version, lines
    status = links.describe_link(links.current())
    changed = changed or status != panel.link_status
    panel.link_status = status
    return changed


def _redraw() -> None:
    panel_changed = copy_for_panel()
    serial = links.serial()
    if serial != panel.drawn_serial:
        panel.drawn_serial = serial
        tag_redraw(("VIEW_3D",))
    elif panel_changed or runtime.busy():
        tag_redraw(("VIEW_3D",), region="UI")


def _load_records() -> None:
    if not panel.records_loaded:
        from . import sessions_list  # it draws on this module: imported when first needed

        panel.records_loaded = sessions_list.load_records()


runtime = Runtime("braas-hpc interactive", NAME, explain=_explain, redraw=_redraw,
                  fast=lambda: links.current() is not None, lasting=("follow",), bridge=links.loop)
CLASSES = (abort_operator(NAME, runtime, "Stop what the add-on is doing now (a wait for a node, a run, a tunnel "
                          "being opened)"),)


def start() -> None:
    panel.records_loaded = False
    runtime.start()
    runtime.ensure_pump()  # in background mode too, where scripts pump by hand (`runtime.wait_until`)
    runtime.state.periodic.append(_load_records)


def stop() -> list[str]:
    """Unregister: close every link and tunnel, end the timer and the loop. Returns what would not close."""
    for operation in links.loop.active("follow"):
        operation.cancel()
    problems = links.close_all()
    runtime.stop()
    links.output.clear()
    panel.output, panel.output_version, panel.link_status = [], -1, ""
    panel.shading.clear()
    for problem in problems:
        print(f"braas-hpc interactive: could not close a tunnel: {problem}")
    return problems
