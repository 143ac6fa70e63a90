"""Knowing at once that a frame landed or a job ended, without asking the scheduler more often.

While `wait`, `status --watch` or `download --follow` run, a small watcher runs on each cluster's
login node (cluster_scripts/job_watcher.py, started over the kept connection with the preset's
`login_python`): it looks at the jobs' frames, task markers and summary on the cluster's own file
system about twice a second and prints a line per change. Its lines come from a shared machine, so
each is checked (a known job, a frame's name, a size that is a number) and a line that does not check is
dropped: the watcher only ever decides *when* to look, never what is true.

A frame event updates what is shown without a scheduler query. An event that says a job ended (its
summary written, or every task of its latest round wrote its final marker) brings the next status poll
forward; that poll is the truth, and it counts as the scheduled one: the back-off starts again from it.
Event polls in a row are spaced 2, 4, 8 ... s apart, so a watcher that cries wolf cannot make one per
line. A task's final marker is its last act before it exits, so a poll brought by markers waits
EVENT_SETTLE_S for the scheduler to record that exit; one that still comes before the scheduler's
accounting does is followed by the next only twice the gap later. Without the watcher (no python3 there, `login_python`
empty, BRAAS_HPC_EVENTS=off) everything runs on the back-off as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from .errors import BraasError
from .jobs import JobPaths
from .presets import Preset
from .registry import JobRecord
from .scripts import script_source
from .transport import transport_for

log = logging.getLogger(__name__)

EVENTS_ENV = "BRAAS_HPC_EVENTS"  # "off": poll on the back-off alone
WATCH_INTERVAL_S = 0.5  # how often the watcher looks on the cluster (its own file system: no scheduler)
WATCH_IDLE_S = 900.0  # it ends after this long without a change; the next poll starts it again
EVENT_GAP_S = 2.0  # the first event-brought poll may come this soon after the last poll; then 4, 8 ...
EVENT_SETTLE_S = 1.0  # a poll brought by a task's final marker waits this long: the task is still exiting
LINE_LIMIT = 4096
_FRAME = re.compile(r"frame_[0-9]{1,12}\.[A-Za-z0-9]{1,8}")
_MARKER = re.compile(r"(?:r([0-9]{1,6})-)?task-[0-9]{1,9}\.json")
_STATE = re.compile(r"[a-z_]{1,32}")
WATCHER = "job_watcher.py"


@dataclass(frozen=True)
class Event:
    kind: str  # "frame", "marker", "summary" (about a job), "ready", "bye"
    job: str = ""
    name: str = ""  # a frame's file name, or a marker's
    size: int = 0
    state: str = ""  # a marker's state word


def parse_event(text: str, jobs: Collection[str]) -> Event | None:
    """One watcher line as an Event, or None when it does not check (any field of a wrong kind, a job
    not asked about, a name that is not a frame's or a marker's)."""
    if len(text) > LINE_LIMIT:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(kind := data.get("e"), str):
        return None
    if kind in ("ready", "bye"):
        return Event(kind)
    job = data.get("job")
    if not isinstance(job, str) or job not in jobs:
        return None
    if kind == "summary":
        return Event(kind, job)
    if kind == "frame":
        name, size = data.get("name"), data.get("size")
        if (isinstance(name, str) and _FRAME.fullmatch(name) and isinstance(size, int) and not isinstance(size, bool)
                and size > 0):
            return Event(kind, job, name, size)
        return None
    if kind == "marker":
        name, state = data.get("task"), data.get("state")
        if isinstance(name, str) and _MARKER.fullmatch(name) and isinstance(state, str) and _STATE.fullmatch(state):
            return Event(kind, job, name, state=state)
    return None


def events_wanted(preset: Preset) -> bool:
    return (os.environ.get(EVENTS_ENV, "on").lower() not in ("off", "0", "no") and not preset.is_local
            and bool(preset.login_python))


@dataclass
class _Watcher:
    preset: Preset
    jobs: frozenset[str]
    task: asyncio.Task[None] | None = None
    ready: bool = False


def round_of_marker(name: str) -> int:
    match = _MARKER.fullmatch(name)
    return int(match.group(1) or 0) if match else -1


@dataclass
class JobEvents:
    """The watchers of the jobs being followed, one per cluster, and what their lines say so far."""

    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    watchers: dict[str, _Watcher] = field(default_factory=dict)
    unable: set[str] = field(default_factory=set)  # presets whose login node cannot run the watcher
    frames: dict[str, set[str]] = field(default_factory=dict)  # job -> frame files the watcher saw
    ended_markers: dict[str, set[str]] = field(default_factory=dict)  # job -> markers saying an ended task
    records: dict[str, JobRecord] = field(default_factory=dict)
    last_poll: float = field(default_factory=time.monotonic)
    gap: float = EVENT_GAP_S
    settle: float = EVENT_SETTLE_S
    end_pending: bool = False
    end_seen: float = 0.0  # when markers first said a job ended since the last poll (0: not, or a summary did)

    def follow(self, records: Iterable[JobRecord], presets: dict[str, Preset]) -> None:
        """Have a watcher running for each cluster of `records` (started again when it ended, or when
        the jobs changed); called with every poll, so it costs no call of its own."""
        by_preset: dict[str, list[JobRecord]] = {}
        for record in records:
            self.records[record.name] = record
            by_preset.setdefault(record.preset, []).append(record)
        for name, group in by_preset.items():
            preset = presets.get(name)
            if preset is None or name in self.unable or not events_wanted(preset):
                continue
            jobs = frozenset(r.name for r in group)
            running = self.watchers.get(name)
            if running and running.task and not running.task.done() and running.jobs == jobs:
                continue
            if running and running.task:
                running.task.cancel()
            dirs = {r.name: JobPaths(r.remote_root, r.name).job_dir for r in group}
            watcher = _Watcher(preset, jobs)
            watcher.task = asyncio.get_running_loop().create_task(self._run(watcher, dirs))
            self.watchers[name] = watcher

    async def _run(self, watcher: _Watcher, dirs: dict[str, str]) -> None:
        request = json.dumps({"jobs": dirs, "interval": WATCH_INTERVAL_S, "idle": WATCH_IDLE_S})
        argv = [watcher.preset.login_python, "-c", script_source(WATCHER), request]
        said: list[str] = []
        try:
            transport = transport_for(watcher.preset)
            async with contextlib.aclosing(transport.stream(argv, check=False)) as lines:
                async for line in lines:
                    if line.stderr:
                        said = (said + [line.text])[-5:]
                        continue
                    event = parse_event(line.text, watcher.jobs)
                    if event is None:
                        log.debug("job watcher on %s: a line that does not check: %.200r", watcher.preset.name,
                                  line.text)
                        continue
                    if event.kind == "ready":
                        watcher.ready = True
                    self._note(event)
                    if event.kind != "frame" or watcher.ready:  # frames already there are in the poll's report
                        self.queue.put_nowait(event)
        except (BraasError, OSError) as error:
            log.info("job watcher on %s stopped: %s", watcher.preset.name, error)
        if not watcher.ready:
            # No python3 there (or one too old), or the connection would not carry it: the back-off alone.
            log.info("job watcher could not run on %s (%s): following by polls alone", watcher.preset.name,
                     " ".join(said)[-300:] or "no answer")
            self.unable.add(watcher.preset.name)

    def _note(self, event: Event) -> None:
        if event.kind == "frame":
            self.frames.setdefault(event.job, set()).add(event.name)
        elif event.kind == "marker" and event.state != "running":
            self.ended_markers.setdefault(event.job, set()).add(event.name)
        elif event.kind == "marker":
            self.ended_markers.get(event.job, set()).discard(event.name)

    def says_ended(self, event: Event) -> bool:
        """Whether the event says its job ended: the summary written, or every task of the job's latest
        round has a final marker (the number of tasks as submitted; unknown for older jobs: summary only)."""
        if event.kind == "summary":
            return True
        record = self.records.get(event.job)
        if event.kind != "marker" or record is None or not record.scheduler_ids:
            return False
        tasks = record.id_tasks.get(record.scheduler_ids[-1], 0)
        ended = [m for m in self.ended_markers.get(event.job, ()) if round_of_marker(m) == record.rounds]
        return bool(tasks) and len(ended) >= tasks

    def live(self) -> bool:
        """Whether a watcher is running (or starting)."""
        return any(w.task and not w.task.done() for w in self.watchers.values())

    def polled(self) -> None:
        """A status poll was made: it is the truth until the next event, whatever the events said before."""
        self.last_poll = time.monotonic()
        self.end_pending = False
        self.end_seen = 0.0

    async def until(self, deadline: float) -> tuple[bool, list[Event]]:
        """Wait until `deadline` (time.monotonic) or an event: (poll now, the events). Poll when the
        deadline came, or when an event said a job ended and an event-brought poll is allowed (at least
        `gap` after the last poll, each such poll doubling `gap`; and `settle` after markers said it).
        Frame events alone return (False, ...)."""
        got: list[Event] = []
        while True:
            if self.end_pending:
                allowed = max(self.last_poll + self.gap, self.end_seen + self.settle)
                if time.monotonic() >= allowed:
                    self.gap *= 2
                    self.end_pending = False
                    return True, got + self._drain()
                deadline = min(deadline, allowed)  # soon, but not sooner than the gap
            if got:
                return False, got
            left = deadline - time.monotonic()
            if left <= 0:
                return True, got
            with contextlib.suppress(TimeoutError):
                got.append(await asyncio.wait_for(self.queue.get(), left))
                got += self._drain()
                if ended := [e for e in got if self.says_ended(e)]:
                    self._end_said(any(e.kind == "summary" for e in ended))
                if not any(e.kind == "frame" for e in got):
                    got = []  # nothing to show: wait on (or poll, if the job ended)

    def _end_said(self, by_summary: bool) -> None:
        """A job ended, by its summary (the finish step ran after the scheduler saw the array end: no
        settling) or by its markers (settled once, from the first such event since the last poll)."""
        already_by_summary = self.end_pending and not self.end_seen
        if by_summary or already_by_summary:
            self.end_seen = 0.0
        elif not self.end_seen:
            self.end_seen = time.monotonic()
        self.end_pending = True

    def _drain(self) -> list[Event]:
        drained = []
        while not self.queue.empty():
            drained.append(self.queue.get_nowait())
        return drained

    async def close(self) -> None:
        tasks = [w.task for w in self.watchers.values() if w.task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.watchers.clear()


async def pause(news: JobEvents, record: JobRecord, preset: Preset, deadline: float) -> bool:
    """Wait for one job until `deadline` or an event (see JobEvents.until): True when frames landed
    (fetch them, no status call), False when it is time for the status poll."""
    news.follow([record], {preset.name: preset})
    if not news.live():
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return False
    poll, _ = await news.until(deadline)
    if poll:
        news.polled()
    return not poll


__all__ = ["EVENTS_ENV", "Event", "JobEvents", "events_wanted", "parse_event", "pause"]
