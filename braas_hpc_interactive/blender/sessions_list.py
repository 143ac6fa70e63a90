"""The sessions list in the panel: rebuilt on the main thread from the records this computer keeps
(`core.records`, so it survives a restart) and the last states the loop fetched."""

from __future__ import annotations

import bpy

from ..core.records import SessionRecord, all_records
from ..core.session import SessionState

_states: dict[str, SessionState] = {}  # main thread only: the last state fetched per session


def _props() -> bpy.types.PropertyGroup | None:
    window_manager = getattr(bpy.context, "window_manager", None)
    return getattr(window_manager, "braas_hpc_interactive", None) if window_manager else None


def load_records() -> bool:
    """Show the recorded sessions; False while Blender has no window manager yet (startup)."""
    props = _props()
    if props is None:
        return False
    show(all_records())
    return True


def remember(states: list[SessionState]) -> None:
    for s in states:
        _states[s.record.name] = s
    show(all_records())


def show(records: list[SessionRecord]) -> None:
    props = _props()
    if props is None:
        return
    selected = selected_name()
    props.sessions.clear()
    for record in records:
        item = props.sessions.add()
        item.name, item.preset, item.job_id, item.gpu = record.name, record.preset, record.job_id, record.gpu
        item.walltime_min = record.walltime_min
        known = _states.get(record.name)
        if known is not None:
            item.job_state, item.node, item.command, item.port = (known.job_state, known.node, known.command,
                                                                   known.port or 0)
    names = [r.name for r in records]
    if selected in names:
        props.active_session = names.index(selected)
    elif names:
        props.active_session = len(names) - 1  # the newest


def select(name: str) -> None:
    props = _props()
    if props is None:
        return
    for index, item in enumerate(props.sessions):
        if item.name == name:
            props.active_session = index


def selected_name() -> str:
    props = _props()
    if props is None or not 0 <= props.active_session < len(props.sessions):
        return ""
    return props.sessions[props.active_session].name


def forget(name: str) -> None:
    _states.pop(name, None)
    show(all_records())


def clear() -> None:
    _states.clear()
