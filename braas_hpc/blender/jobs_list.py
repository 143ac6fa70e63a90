"""The jobs list on the main thread: rows from the loop into the runtime collection, and the refresh
that keeps active jobs current with back-off (5 s after a change, up to one minute), gentle on the
scheduler: one query per cluster per refresh, and none at all once every job has ended."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import bpy

from ..addon_kit.bridge import Operation
from ..core.schedulers.base import TERMINAL
from . import activity, addon
from .addon import runtime

FIRST_INTERVAL_S = 5.0
MAX_INTERVAL_S = 60.0


def jobs() -> bpy.types.bpy_prop_collection:
    return bpy.context.window_manager.braas_hpc.jobs


def apply_rows(rows: Iterable[activity.JobRow]) -> None:
    items = jobs()
    index = {item.name: item for item in items}
    for row in rows:
        item = index.get(row.name)
        if item is None:
            item = items.add()
            item.name = row.name
            index[row.name] = item
        item.preset = row.preset
        item.state = row.state
        item.frames_done = row.frames_done
        item.frames_total = row.frames_total
        item.scheduler_ids = ", ".join(row.scheduler_ids)
        item.missing = ", ".join(map(str, row.missing[:50])) + (" ..." if len(row.missing) > 50 else "")
        if row.created:
            item.created = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.created))
            item.sort_key = f"{row.created:020.6f}"
        folder = addon.preferences().storage() / row.name
        item.local_dir = str(folder)
        if not item.thumbnail:  # a downloaded frame, else the cluster's thumbnail of the last frame
            newest = activity.last_frame(folder)
            item.thumbnail = str(newest) if newest else row.thumbnail
    _newest_first(items)


def _newest_first(items: bpy.types.bpy_prop_collection) -> None:
    # Insertion sort with collection moves (collections have no sort); the list is short and mostly sorted.
    for i in range(1, len(items)):
        j = i
        while j > 0 and items[j - 1].sort_key < items[j].sort_key:
            items.move(j, j - 1)
            j -= 1


def active_names() -> list[str]:
    return [item.name for item in jobs() if item.state not in TERMINAL]


class AutoRefresh:
    """Called by the pump every tick; starts a refresh of the active jobs when due."""

    def __init__(self) -> None:
        self.interval = FIRST_INTERVAL_S
        self.due = 0.0

    def soon(self) -> None:
        self.interval = FIRST_INTERVAL_S
        self.due = time.monotonic() + FIRST_INTERVAL_S
        runtime.ensure_pump()

    def __call__(self) -> None:
        names = active_names()
        if not names or time.monotonic() < self.due or runtime.state.bridge.active("refresh"):
            return
        if not bpy.app.online_access and any(_remote(name) for name in names):
            return  # Blender is offline by the user's choice: no network, not even for status
        self.due = time.monotonic() + self.interval
        self.interval = min(self.interval * 1.6, MAX_INTERVAL_S)
        runtime.state.bridge.run("Refreshing jobs", lambda: activity.refresh(names), "refresh",
                                 on_done=_refreshed)


def _remote(name: str) -> bool:
    item = jobs().get(name)
    return item is None or item.preset != "local"


def _refreshed(operation: Operation) -> None:
    if operation.cancelled:
        return
    error = operation.error()
    if error is not None:
        runtime.tell(f"refresh: {runtime.describe(error)}", "WARNING")
        return
    show_refresh(operation.result())


def show_refresh(result: activity.Refresh) -> None:
    apply_rows(result.rows)
    notes = [f"{preset}: {why}" for preset, why in result.errors.items()]
    notes += [f"{r.job}: {len(r.plan.frames)} lost frame(s) resubmitted (round {r.round})"
              for r in result.recoveries if r.plan is not None and not r.error]
    notes += [f"{r.job}: lost frames not resubmitted: {r.error}" for r in result.recoveries if r.error]
    if notes:
        runtime.tell("; ".join(notes), "WARNING" if result.errors or any(r.error for r in result.recoveries)
                     else "INFO")
    if any(not r.error for r in result.recoveries):
        auto_refresh.soon()


auto_refresh = AutoRefresh()


def load_registry() -> None:
    """At register and after a restart: the list as recorded, then a refresh if any job is active."""
    def loaded(rows: list[activity.JobRow]) -> None:
        apply_rows(rows)
        if any(row.active for row in rows):
            auto_refresh.soon()

    if bpy.app.background:
        loaded(activity.registry_rows())
        return
    def read(operation: Operation) -> None:
        if operation.cancelled or operation.error() is not None:
            runtime.tell(f"reading the jobs registry: {operation.error()}", "ERROR")
            return
        loaded(operation.result())

    runtime.state.bridge.run("Reading jobs", activity.load_rows, "registry", on_done=read)
    runtime.ensure_pump()


def job_folder(name: str) -> Path:
    return addon.preferences().storage() / name
