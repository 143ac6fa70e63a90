"""The jobs list on the main thread: rows from the loop into the runtime collection, and the follower that
keeps active jobs current: one long-lived operation on the loop (activity.follow) that polls as gently as
the panel always has (5 s after a change, backing off to once a minute, one query per cluster, none once
every job has ended) and, between polls, shows what the cluster's job watcher sees land (core.events).
Its reports wait in a thread-safe queue; the pump applies them here."""

from __future__ import annotations

import dataclasses
import queue
import time
from collections.abc import Iterable
from pathlib import Path

import bpy

from ..addon_kit.bridge import Operation
from ..core.errors import BraasError
from ..core.schedulers.base import PENDING, TERMINAL
from . import activity, addon, job_news
from .addon import runtime

FIRST_INTERVAL_S = 5.0
GROWTH = 1.6
RETRY_S = 60.0  # a follower that ended with jobs still active (a cluster down, a login refused): again after this
FOLLOW = "follow"  # its operations' kind: lasting (Abort leaves it alone) and idle (the timer keeps its slow pace)


def jobs() -> bpy.types.bpy_prop_collection:
    return bpy.context.window_manager.braas_hpc.jobs


def apply_rows(rows: Iterable[activity.JobRow]) -> list[tuple[str, str, int, int]]:
    """The rows in the list; returns the jobs seen to end just now (job, state, frames done, total)."""
    items = jobs()
    index = {item.name: item for item in items}
    ended = []
    for row in rows:
        item = index.get(row.name)
        if item is None:
            item = items.add()
            item.name = row.name
            index[row.name] = item
        elif item.state not in TERMINAL and row.state in TERMINAL:
            ended.append((row.name, row.state, row.frames_done, row.frames_total))
        item.preview = row.preview
        item.progress = row.progress if row.state not in TERMINAL else ""
        item.preset = row.preset
        item.state = row.state
        item.frames_done = row.frames_done
        item.frames_total = row.frames_total
        item.scheduler_ids = ", ".join(row.scheduler_ids)
        item.missing = ", ".join(map(str, row.missing[:50])) + (" ..." if len(row.missing) > 50 else "")
        if row.group:
            _apply_group(item, row)
        if row.created:
            item.created = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.created))
            item.sort_key = f"{row.created:020.6f}"
        folder = addon.preferences().storage() / row.name
        item.local_dir = str(folder)
        if not item.thumbnail:  # a downloaded frame, else the cluster's thumbnail of the last frame
            newest = activity.last_frame(folder)
            item.thumbnail = str(newest) if newest else row.thumbnail
    _newest_first(items)
    return ended


def _apply_group(item: bpy.types.PropertyGroup, row: activity.JobRow) -> None:
    """A group's row: each cluster's share; its last moves stay shown until a later look moves frames."""
    item.is_group, item.pool = True, row.pool
    if row.moves:
        item.moves = "; ".join(row.moves)
    item.members.clear()
    for member in row.members:
        shown = item.members.add()
        shown.name, shown.job, shown.state = member.preset, member.job, member.state
        shown.frames_done, shown.frames_held = member.frames_done, member.frames_held
        shown.seconds_per_frame, shown.slots = member.pace.frame_s, member.pace.slots
        shown.error = member.error


def _newest_first(items: bpy.types.bpy_prop_collection) -> None:
    # Insertion sort with collection moves (collections have no sort); the list is short and mostly sorted.
    for i in range(1, len(items)):
        j = i
        while j > 0 and items[j - 1].sort_key < items[j].sort_key:
            items.move(j, j - 1)
            j -= 1


def active_names() -> list[str]:
    return [item.name for item in jobs() if item.state not in TERMINAL]


class Follower:
    """Called by the pump every tick: applies what the follower reported, and keeps one follower running
    for the active jobs (restarted when a job joins them or on `soon`; stopped when none is left, or when
    Blender is offline by the user's choice, for the jobs that need the network)."""

    def __init__(self) -> None:
        self.reports: queue.SimpleQueue[activity.Refresh] = queue.SimpleQueue()  # filled on the loop thread
        self.operation: Operation | None = None
        self.following: tuple[str, ...] = ()
        self.again = False  # `soon` was asked: start over (and from the first interval)
        self.retry_at = 0.0
        self.told = ""  # the last notes a report told: the same ones are not told again between polls

    def soon(self) -> None:
        """Follow again from the start of the back-off (a submission, a cancel, a resubmission)."""
        self.again = True
        runtime.ensure_pump()

    def running(self) -> bool:
        return self.operation is not None and not self.operation.finished

    def __call__(self) -> bool:
        """Returns whether a report was applied (the panels then redraw at once)."""
        ended = self.operation is not None and self.operation.finished  # before its last reports are applied
        applied = self._apply_reports()
        if runtime.background():
            return applied  # no timer runs there; each operator refreshes what it changed
        wanted = active_names()
        if not bpy.app.online_access:
            wanted = [name for name in wanted if not _remote(name)]  # offline by choice: no network
        if not wanted:
            self.stop()
            return applied
        listed = {item.name for item in jobs()}
        changed = self.again or not set(wanted) <= set(self.following) or not set(self.following) <= listed
        if self.operation is not None and not ended:
            if changed:
                self._start(wanted)
            return applied
        if self.operation is not None and self.retry_at == 0.0:
            self.retry_at = time.monotonic() + RETRY_S  # it ended with jobs not seen to end: a cluster's fault
        if changed or time.monotonic() >= self.retry_at:
            self._start(wanted)
        return applied

    def _start(self, names: list[str]) -> None:
        self.stop()
        self.again, self.retry_at, self.following = False, 0.0, tuple(names)
        put = self.reports.put
        # "Download frames as they land": each job's frames into its folder, as Download Frames does.
        fetch = {"download_to": {name: job_folder(name) for name in names}} if _auto_download() else {}
        self.operation = runtime.state.bridge.run(
            "Following jobs", lambda: activity.follow(names, put, FIRST_INTERVAL_S, GROWTH, **fetch), FOLLOW,
            on_done=_followed)

    def stop(self) -> None:
        if self.running():
            assert self.operation is not None
            self.operation.cancel()
        self.operation, self.following, self.retry_at = None, (), 0.0

    def reset(self) -> None:
        """At unregister: nothing followed, nothing left to apply (the loop is stopped with its operations)."""
        self.stop()
        self.again, self.told = False, ""
        self.reports = queue.SimpleQueue()

    def _apply_reports(self) -> bool:
        applied = False
        while True:
            try:
                result = self.reports.get_nowait()
            except queue.Empty:
                return applied
            applied = True
            listed = {item.name for item in jobs()}  # a job removed meanwhile stays removed
            notes = show_rows(dataclasses.replace(result, rows=[r for r in result.rows if r.name in listed]))
            if notes and notes != self.told:
                tell_notes(result, notes)
            self.told = notes

    def describe(self) -> str:
        """A line for the panel: what is followed now."""
        if self.running():
            return f"Following {len(self.following)} active job(s)"
        if any(_remote(name) for name in active_names()) and not bpy.app.online_access:
            return "Not following the active jobs: Blender's online access is off"
        return ""


def _auto_download() -> bool:
    try:
        return bool(addon.preferences().auto_download)
    except BraasError:
        return False


def _remote(name: str) -> bool:
    item = jobs().get(name)
    return item is None or item.preset != "local"


def _followed(operation: Operation) -> None:
    if operation.cancelled:
        return
    error = operation.error()
    if error is not None:
        runtime.tell(f"following jobs: {runtime.describe(error)}", "WARNING")


def mark_pending(name: str) -> None:
    """A new round of an ended job was submitted (the registry records it pending): follow it again."""
    item = jobs().get(name)
    if item is not None:
        item.state = PENDING
    follower.soon()


def show_refresh(result: activity.Refresh) -> None:
    """A refresh's answer in the list, and its notes (errors per cluster, recoveries) on the status line."""
    tell_notes(result, show_rows(result))
    if any(not r.error for r in result.recoveries):
        follower.soon()  # the new rounds: followed from the first interval


def show_rows(result: activity.Refresh) -> str:
    """The rows in the list (a job seen to end is announced); returns the notes to tell."""
    notes = job_news.announce(apply_rows(result.rows))
    notes += [f"{preset}: {why}" for preset, why in result.errors.items()] + result.notes
    notes += [f"{r.job}: {len(r.plan.frames)} lost frame(s) resubmitted (round {r.round})"
              for r in result.recoveries if r.plan is not None and not r.error]
    notes += [f"{r.job}: lost frames not resubmitted: {r.error}" for r in result.recoveries if r.error]
    return "; ".join(notes)


def tell_notes(result: activity.Refresh, notes: str) -> None:
    if notes:
        runtime.tell(notes, "WARNING" if result.errors or any(r.error for r in result.recoveries) else "INFO")


follower = Follower()


def load_registry() -> None:
    """At register and after a restart: the list as recorded, then the follower if any job is active."""
    def loaded(rows: list[activity.JobRow]) -> None:
        apply_rows(rows)
        if any(row.active for row in rows):
            follower.soon()

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
