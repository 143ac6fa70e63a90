"""Automatic recovery: the frames a round lost (a failed, timed-out, preempted or killed task) go to
the cluster again as a new round, without the user asking, up to the job's retry limit.

The new round is sized from what the finished tasks measured, so its chunks fit the walltime with a
margin, and it avoids nodes where tasks of this job died twice (Slurm `--exclude`). Finished frames
are never rendered again: the render task skips every frame file that exists. A job the user
cancelled with `braas-hpc cancel` (or the panel's Cancel) is never recovered: the registry says so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass

from . import monitor, registry, service
from .context import JobContext, context_of
from .errors import BraasError, UsageError
from .jobs import JobPaths, JobSpec
from .markers import ALL_MARKERS_BYTES, MARKER_BYTES, parse_marker
from .monitor import JobStatus
from .schedulers.base import CANCELLED, FAILED, NODE_NAME, TERMINAL, TIMEOUT
from .transport import Transport

WALLTIME_MARGIN = 0.75  # a new chunk's measured render time may fill this share of the walltime
FAILURES_TO_EXCLUDE = 2  # tasks of the job that died on a node before it is avoided
EARLY_DEATH = 0.9  # a task that stopped before this share of its walltime died of something else
RECOVERABLE = frozenset({FAILED, TIMEOUT, CANCELLED})  # CANCELLED here: a task cancelled by someone else

# Every marker of the job as "<json>\0", in one call, each and all of them capped.
_MARKERS_SCRIPT = ('for f in "$1"/*.json; do [ -f "$f" ] && head -c "$2" -- "$f" && printf "\\0"; done | head -c "$3"; '
                   'exit 0')


@dataclass(frozen=True)
class Plan:
    frames: tuple[int, ...]
    chunk: int
    exclude_nodes: tuple[str, ...]
    seconds_per_frame: float | None  # measured (the slowest 10% of rendered frames), None: nothing measured


@dataclass(frozen=True)
class Recovery:
    job: str
    plan: Plan | None = None
    round: int = 0
    scheduler_ids: tuple[str, ...] = ()
    error: str = ""

    def to_json(self) -> dict[str, object]:
        plan = self.plan
        return {"job": self.job, "round": self.round, "scheduler_ids": list(self.scheduler_ids), "error": self.error,
                "frames": list(plan.frames) if plan else [], "chunk": plan.chunk if plan else 0,
                "exclude_nodes": list(plan.exclude_nodes) if plan else []}


async def read_markers(transport: Transport, paths: JobPaths) -> list[dict[str, object]]:
    done = await transport.run(["sh", "-c", _MARKERS_SCRIPT, "sh", paths.status_dir, str(MARKER_BYTES + 1),
                                str(ALL_MARKERS_BYTES)], timeout=120, check=False)
    markers = []
    for text in done.stdout.split("\0"):
        data = parse_marker(text)
        if data is not None:  # else an empty tail, a marker being rewritten right now, or a damaged one
            markers.append(data)
    return markers


def seconds_per_frame(markers: list[dict[str, object]]) -> float | None:
    timings = sorted(float(s) for m in markers if isinstance(m.get("timings"), dict)
                     for s in m["timings"].values() if isinstance(s, int | float))  # type: ignore[union-attr]
    if not timings:
        return None
    return timings[min(len(timings) - 1, math.floor(len(timings) * 0.9))]


def failing_nodes(markers: list[dict[str, object]], walltime_min: int, now: float | None = None) -> tuple[str, ...]:
    """Nodes where tasks of the job died early (not at walltime) or failed to start, at least twice."""
    now = time.time() if now is None else now
    deaths: Counter[str] = Counter()
    for marker in markers:
        node, state, started = marker.get("node"), marker.get("state"), marker.get("started")
        if not isinstance(node, str) or not NODE_NAME.fullmatch(node):
            continue
        ended_early = (state == "running" and isinstance(started, int | float)
                       and now - started < walltime_min * 60 * EARLY_DEATH)
        if state == "failed" and marker.get("exit_code") == 4 or ended_early:
            deaths[node] += 1  # no GPU there, or killed under the task (node failure, out of memory)
    healthy = {m.get("node") for m in markers if m.get("state") == "done"}
    if not healthy - set(deaths):
        return ()  # no node is known to work: excluding the only ones seen could leave the job nowhere to run
    return tuple(sorted(node for node, count in deaths.items() if count >= FAILURES_TO_EXCLUDE))


def fitting_chunk(spec: JobSpec, per_frame: float | None, timed_out: bool) -> int:
    """Frames per task for the new round: what fits the walltime with a margin, never more than asked."""
    if per_frame is None or per_frame <= 0:
        return max(1, spec.chunk // 2) if timed_out else spec.chunk
    fits = spec.walltime_min * 60 * WALLTIME_MARGIN / per_frame
    if not math.isfinite(fits):  # a timing too small to divide by (or NaN): nothing measured
        return spec.chunk
    return max(1, min(spec.chunk, math.floor(fits)))


def plan(spec: JobSpec, markers: list[dict[str, object]], missing: tuple[int, ...], timed_out: bool,
         now: float | None = None) -> Plan:
    per_frame = seconds_per_frame(markers)
    return Plan(tuple(missing), fitting_chunk(spec, per_frame, timed_out),
                failing_nodes(markers, spec.walltime_min, now), per_frame)


def due(status: JobStatus, record: registry.JobRecord) -> bool:
    return (status.state in RECOVERABLE and bool(status.missing) and not record.user_cancelled
            and record.rounds < record.spec.retries)


async def recover(statuses: list[JobStatus]) -> list[Recovery]:
    """Resubmit the lost frames of every ended job that may still be retried. One job's failure to
    resubmit is reported with it and does not stop the others."""
    done = []
    for status in statuses:
        record = registry.get_job(status.job)
        if not due(status, record):
            continue
        try:
            job = context_of(record)
            chosen = plan(record.spec, await read_markers(job.transport, job.paths), status.missing,
                          status.state == TIMEOUT)
            result = await service.resubmit(job, list(chosen.frames), chunk=chosen.chunk,
                                            exclude_nodes=chosen.exclude_nodes)
            done.append(Recovery(record.name, chosen, record.rounds + 1, result.scheduler_ids))
        except BraasError as error:
            done.append(Recovery(record.name, error=str(error)))
    return done


async def resubmit_missing(job: JobContext, exclude_nodes: tuple[str, ...] | None = None
                           ) -> tuple[service.SubmitResult, Plan]:
    """The user's Resubmit (the panel's button, `braas-hpc resubmit`): the missing frames of an ended
    job, planned as automatic recovery plans them (a chunk that fits the walltime, nodes that killed
    tasks avoided), with the user's own `exclude_nodes` instead when given."""
    current = await monitor.job_status(job)
    if current.state not in TERMINAL:
        raise UsageError(f"job {job.name} is still {current.state}: wait for it or cancel it first")
    if not current.missing:
        raise UsageError(f"job {job.name} has every frame; nothing to resubmit")
    if exclude_nodes and not job.scheduler.exclude_argv(exclude_nodes):
        raise UsageError(f"{job.preset.scheduler} cannot keep a job off given nodes; resubmit without --exclude")
    markers = await read_markers(job.transport, job.paths)
    chosen = plan(job.record.spec, markers, current.missing, current.state == TIMEOUT)
    if exclude_nodes is not None:
        chosen = dataclasses.replace(chosen, exclude_nodes=exclude_nodes)
    result = await service.resubmit(job, list(chosen.frames), chunk=chosen.chunk, exclude_nodes=chosen.exclude_nodes)
    return result, chosen


async def status_and_recover(names: list[str] | None = None) -> tuple[monitor.StatusReport, list[Recovery]]:
    """What watchers call (`status`, `wait`, the add-on's refresh): the jobs' states, with lost frames
    already on their way again; recovered jobs are reported as they stand after the resubmission. A
    cluster that does not answer is in the report's errors; the jobs of the others are recovered."""
    report = await monitor.status_report(names)
    recoveries = await recover(report.statuses)
    again = [r.job for r in recoveries if not r.error]
    if again:
        fresh = await monitor.status_report(again)
        by_job = {s.job: s for s in fresh.statuses}
        # A cluster that answered a moment ago and not now: its jobs keep the first answer.
        report = dataclasses.replace(report, statuses=[by_job.get(s.job, s) for s in report.statuses])
    return report, recoveries
