"""`wait` and `status --watch`: poll a job's state (core.monitor), resubmitting lost frames on the way
(core.recovery), with a back-off that is gentle on the scheduler; `render`: a job on this computer,
followed to its end."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from . import events, monitor, progress, recovery, registry, service
from .blender_version import check_can_open
from .context import job_context
from .errors import BraasError, UsageError, WaitTimedOut
from .frames import format_frames
from .jobs import JobSpec, frame_file_name
from .local_blender import local_blender
from .presets import Preset, load_preset
from .schedulers.base import COMPLETED, TERMINAL
from .service import ProgressCallback, SubmitResult
from .spec import SubmitRequest, build_spec

log = logging.getLogger(__name__)
MAX_OUTAGES = 8  # polls in a row that may fail to connect before `wait` gives up (with back-off: minutes)
POLL_MAX_S = 30.0  # the longest pause between polls unless the user asks otherwise
POLL_MIN_S = 2.0  # gentle on the scheduler: nobody polls it faster than this
POLL_MAX_ENV = "BRAAS_HPC_POLL_MAX"


def poll_max(value: float | str | None = None) -> float:
    """The longest pause between polls: `value`, else $BRAAS_HPC_POLL_MAX, else 30 s; at least 2 s."""
    given = value if value is not None else os.environ.get(POLL_MAX_ENV) or POLL_MAX_S
    try:
        seconds = float(given)
    except ValueError:
        raise UsageError(f"{POLL_MAX_ENV}={given!r} is not a number of seconds") from None
    if not seconds >= POLL_MIN_S:  # also refuses nan
        raise UsageError(f"the longest pause between polls must be at least {POLL_MIN_S:.0f} s, not {given}")
    return seconds


async def _poll(names: list[str] | None, recover: bool) -> tuple[monitor.StatusReport, list[recovery.Recovery]]:
    if recover:
        return await recovery.status_and_recover(names)
    return await monitor.status_report(names), []


async def watch(names: list[str] | None = None, poll_max_s: float | None = None, recover: bool = True, *,
                first_s: float | None = None, growth: float = 2.0
                ) -> AsyncIterator[tuple[monitor.StatusReport, list[recovery.Recovery]]]:
    """Every poll's report (and the recoveries it made), with back-off (2, 4, 8 ... s, at most
    `poll_max_s`, see `poll_max`; the add-on's panel keeps its own pace: `first_s` after the first poll,
    each pause `growth` times the last), until every job asked about has ended or can no longer be asked. With
    `recover`, frames lost on the way are resubmitted (core.recovery) and watching goes on for them.

    A cluster that does not answer hides none of the others. A dropped connection is a pause for its
    jobs: up to MAX_OUTAGES polls in a row are waited out. A refused host key or login, or a preset that
    is gone, is not something waiting fixes: those jobs are not asked again, and their errors stay in
    every later report."""
    poll_max_s = poll_max(poll_max_s)
    pace = (max(first_s or POLL_MIN_S, POLL_MIN_S), max(growth, 1.0))  # never faster than POLL_MIN_S
    news = events.JobEvents()
    try:
        async for found in _watch(names, poll_max_s, recover, news, pace):
            yield found
    finally:
        await news.close()


async def _watch(names: list[str] | None, poll_max_s: float, recover: bool, news: events.JobEvents,
                 pace: tuple[float, float]) -> AsyncIterator[tuple[monitor.StatusReport, list[recovery.Recovery]]]:
    first_s, growth = pace
    interval = first_s
    outages = 0
    lasting: list[monitor.ClusterError] = []
    while True:
        report, recoveries = await _poll(names, recover)
        news.polled()
        lasting += [e for e in report.errors if e.lasting]
        outages = outages + 1 if any(not e.lasting for e in report.errors) else 0
        for error in report.errors:
            if not error.lasting:
                log.warning("watching: %s did not answer: %s; trying again in %.0f s", error.preset, error.error,
                            interval)
        report = dataclasses.replace(report, errors=lasting + [e for e in report.errors if not e.lasting])
        if any(not r.error for r in recoveries):
            interval = first_s  # a new round: its start is worth seeing soon
        yield report, recoveries
        waiting_helps = outages and outages <= MAX_OUTAGES
        if all(s.state in TERMINAL for s in report.statuses) and not waiting_helps:
            return
        given_up = {job for e in lasting for job in e.jobs}
        names = [s.job for s in report.statuses] + [j for e in report.errors if not e.lasting for j in e.jobs
                                                    if j not in given_up]
        follow_events(news, report)
        deadline = time.monotonic() + interval
        if not news.live():
            await asyncio.sleep(interval)  # no watcher there: the back-off alone, as without events
        while news.live() and not (await news.until(deadline))[0]:
            if (seen := with_frames(report, news)) != report:  # frames landed: shown without asking the scheduler
                report = seen
                yield report, []
        interval = min(interval * growth, poll_max_s)


def follow_events(news: events.JobEvents, report: monitor.StatusReport) -> None:
    """The cluster watchers for the jobs still running (started again if one ended)."""
    records: list[registry.JobRecord] = []
    presets: dict[str, Preset] = {}
    for status in report.statuses:
        if status.state in TERMINAL:
            continue
        with contextlib.suppress(BraasError):  # forgotten meanwhile, or its preset gone: the polls tell
            record = registry.get_job(status.job)
            presets.setdefault(record.preset, load_preset(record.preset))
            records.append(record)
    news.follow(records, presets)


def with_frames(report: monitor.StatusReport, news: events.JobEvents) -> monitor.StatusReport:
    """The report with the frames the watcher saw land counted in (never fewer than the poll found)."""
    statuses = []
    for status in report.statuses:
        seen = news.frames.get(status.job, set())
        record = news.records.get(status.job)
        if seen and record is not None and status.missing:
            missing = tuple(f for f in status.missing if frame_file_name(f, record.spec.extension) not in seen)
            status = dataclasses.replace(status, missing=missing, frames_done=status.frames_total - len(missing))
        statuses.append(status)
    return dataclasses.replace(report, statuses=statuses)


async def wait(name: str, timeout_s: float | None = None, poll_max_s: float | None = None, recover: bool = True,
               on_status: Callable[[monitor.JobStatus], Awaitable[None]] | None = None) -> monitor.JobStatus:
    """Poll (see `watch`) until the job ends; return its final status, each status (the final one too)
    handed to `on_status` on the way. Its cluster's error is raised once waiting no longer helps (a
    refused login, a preset gone, too many failed polls in a row)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    failed: monitor.ClusterError | None = None
    async with contextlib.aclosing(watch([name], poll_max_s, recover)) as polls:
        async for report, _recoveries in polls:
            if report.errors:
                failed = report.errors[0]
                continue
            (current,) = report.statuses
            progress.report(f"{current.state.lower()}, frames", current.frames_done, current.frames_total)
            if on_status is not None:
                await on_status(current)
            if current.state in TERMINAL:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimedOut(f"job {name} is still {current.state} after {timeout_s:.0f} s; it goes on: "
                                   f"braas-hpc wait {name} again, or braas-hpc status {name}")
    if failed is not None:
        raise failed.error
    raise AssertionError("watch ends only once the job has ended")  # pragma: no cover


LOCAL_POLL_S = 0.5  # this computer's queue costs nothing to ask: the bar moves with each frame


async def render_local(request: SubmitRequest, built: tuple[JobSpec, Preset] | None = None,
                       on_progress: ProgressCallback | None = None) -> SubmitResult:
    """Render on this computer and wait for it: a job on the local queue like any other (status, logs,
    resubmit work on it), followed until its frames are done. Cancelling this (Ctrl+C, the add-on's
    Abort) cancels the job; a job left to run on its own is `braas-hpc submit --preset local`.

    `built`: the request's build_spec, so bad input is refused before anything is shown or written.
    """
    spec, preset = built or build_spec(request)
    if not preset.is_local:
        raise UsageError(f"preset {preset.name} is a cluster: use `braas-hpc submit` for it")
    if spec.pack == "dir":  # packed mode: the copy is saved by this Blender, checked when packing
        await asyncio.to_thread(check_can_open, Path(spec.scene), tuple(local_blender()), "renders here")
    result = await service.submit(request, (spec, preset))
    try:
        while True:  # lost frames are rendered again as on a cluster (core.recovery), up to the job's retries
            report, _ = await recovery.status_and_recover([result.job])
            (status,) = report.raise_first()
            if on_progress:
                on_progress(status.frames_done, status.frames_total, status.state.lower())
            if status.state in TERMINAL:
                break
            await asyncio.sleep(LOCAL_POLL_S)
    except asyncio.CancelledError:
        await asyncio.shield(service.cancel(job_context(result.job)))
        raise
    if status.state != COMPLETED:
        raise BraasError(f"job {spec.name} ended {status.state} with frames missing "
                         f"({format_frames(status.missing)}); logs are in {result.job_dir}/log")
    return result
