"""Automatic recovery: the frames a round lost (a failed, timed-out, preempted or killed task) go to
the cluster again as a new round, without the user asking, up to the job's retry limit.

The new round is sized from what the finished tasks measured, so its chunks fit the walltime with a
margin, and it avoids nodes where tasks of this job died twice (Slurm `--exclude`). Finished frames
are never rendered again: the render task skips every frame file that exists. A job the user
cancelled with `braas-hpc cancel` (or the panel's Cancel) is never recovered: the registry says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import batch, monitor, registry, service
from .context import JobContext, context_of
from .errors import BraasError, UsageError
from .jobs import JobPaths
from .markers import ALL_MARKERS_BYTES, MARKER_BYTES, parse_marker
from .monitor import JobStatus
from .planning import Plan, plan
from .schedulers.base import CANCELLED, FAILED, TERMINAL, TIMEOUT
from .transport import Transport

RECOVERABLE = frozenset({FAILED, TIMEOUT, CANCELLED})  # CANCELLED here: a task cancelled by someone else

# Every marker of the job as "<json>\0", in one call, each and all of them capped.
_MARKERS_SCRIPT = ('for f in "$1"/*.json; do [ -f "$f" ] && head -c "$2" -- "$f" && printf "\\0"; done | head -c "$3"; '
                   'exit 0')


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


def markers_argv(paths: JobPaths) -> list[str]:
    return ["sh", "-c", _MARKERS_SCRIPT, "sh", paths.status_dir, str(MARKER_BYTES + 1), str(ALL_MARKERS_BYTES)]


async def read_markers(transport: Transport, paths: JobPaths, ahead: batch.Answers | None = None
                       ) -> list[dict[str, object]]:
    """Every marker of the job, from `ahead` when a batch brought them, else in a call of their own."""
    done = (ahead.take("all_markers") if ahead is not None else None) or await transport.run(
        markers_argv(paths), timeout=120, check=False)
    markers = []
    for text in done.stdout.split("\0"):
        data = parse_marker(text)
        if data is not None:  # else an empty tail, a marker being rewritten right now, or a damaged one
            markers.append(data)
    return markers


def due(status: JobStatus, record: registry.JobRecord) -> bool:
    # A group member's lost frames go back to its group (core.group), which hands them out again.
    return (status.state in RECOVERABLE and bool(status.missing) and not record.user_cancelled
            and record.rounds < record.spec.retries and not record.spec.group)


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
    tasks avoided), with the user's own `exclude_nodes` instead when given. The markers come with the
    status, in one remote call: with the submission that follows, two round trips."""
    current, ahead = await monitor.job_status_and(job, [batch.Step("all_markers", markers_argv(job.paths))])
    if current.state not in TERMINAL:
        raise UsageError(f"job {job.name} is still {current.state}: wait for it or cancel it first")
    if not current.missing:
        raise UsageError(f"job {job.name} has every frame; nothing to resubmit")
    if exclude_nodes and not job.scheduler.exclude_argv(exclude_nodes):
        raise UsageError(f"{job.preset.scheduler} cannot keep a job off given nodes; resubmit without --exclude")
    markers = await read_markers(job.transport, job.paths, ahead)
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
