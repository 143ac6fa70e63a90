"""One animation over several clusters (core.group) as the add-on sees it, on the loop (no bpy here).

A group is one row of the jobs list; its member jobs (`<group>.<preset>`) are never rows of their own and
are never asked about apart from their group: the group's look asks each member's cluster once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core import group, group_state, logs, registry, service, transfer, video
from ..core.errors import BraasError, UsageError
from ..core.fanout import Group
from ..core.frames import format_frames
from ..core.group import GroupStatus
from ..core.monitor import JobStatus
from ..core.schedulers.base import TERMINAL
from ..core.spec import SubmitRequest

# A running group is looked at (and driven: frames handed out, chunks moved) at least this often by the
# jobs follower, backing off from its first interval while nothing moves; the CLI's `wait` looks every 5 s.
FOLLOW_MAX_S = 15.0


@dataclass(frozen=True)
class Recorded:
    """Every group in the registry with what is needed to show it without the network."""

    groups: dict[str, dict]  # name -> its record (core.group's document)
    members: set[str]  # the member jobs of those groups
    created: dict[str, float]  # name -> when its first member was submitted


def recorded(records: Iterable[registry.JobRecord]) -> Recorded:
    """The groups as recorded (registry reads: call it off the main thread, or from the loop's thread)."""
    groups = {name: registry.get_group(name) for name in registry.list_groups()}
    members, created = set(), {}
    for record in records:
        if record.spec.group in groups:
            members.add(record.name)
            created[record.spec.group] = min(created.get(record.spec.group, record.created), record.created)
    return Recorded(groups, members, created)


def status_as_recorded(name: str, data: Mapping[str, object], states: Mapping[str, str]) -> GroupStatus:
    """The group's state from its record and its members' recorded states (`states`: job -> state), as
    the last look left them; what the panel shows at start and for a group that has ended."""
    jobs: dict[str, str] = data["jobs"]  # type: ignore[assignment]
    looks = {preset: group_state.Look(preset, JobStatus(job, preset, states[job], 0, 0))
             for preset, job in jobs.items() if job in states}
    return group_state.status_of(name, dict(data), Group.from_json(data["plan"]), looks, ())  # type: ignore[arg-type]


def recorded_statuses(found: Recorded, records: Iterable[registry.JobRecord]) -> dict[str, GroupStatus]:
    states = {r.name: r.state for r in records}
    return {name: status_as_recorded(name, data, states) for name, data in found.groups.items()}


async def look(names: Sequence[str], found: Recorded, records: Iterable[registry.JobRecord]
               ) -> tuple[list[GroupStatus], dict[str, str]]:
    """Each group of `names` once: one not ended is driven (`group.look`: one status call per member
    cluster, frames handed out, chunks moved), one that has ended is shown as recorded (no network).
    Returns the statuses and, per group, why it could not be looked at."""
    as_recorded = recorded_statuses(found, records)
    wanted = [n for n in names if n in as_recorded]
    running = [n for n in wanted if as_recorded[n].state not in TERMINAL]

    async def one(name: str) -> GroupStatus | str:
        try:
            return await group.look(name)
        except BraasError as error:
            return str(error)

    looked = dict(zip(running, await asyncio.gather(*(one(n) for n in running)), strict=True))
    statuses, errors = [], {}
    for name in wanted:
        got = looked.get(name, as_recorded[name])
        if isinstance(got, str):
            errors[name] = got
        else:
            statuses.append(got)
    return statuses, errors


@dataclass(frozen=True)
class Submitted:
    status: GroupStatus
    results: list[service.SubmitResult]
    warnings: list[str]

    def text(self) -> str:
        """The status line after Submit: the group's name, what each cluster got first, what waits."""
        status = self.status
        parts = [f"job {status.name} submitted over {', '.join(m.preset for m in status.members)}"]
        parts += [f"{r.preset} renders frames {r.frames} first" for r in self.results]
        if status.pool:
            parts.append(f"{status.pool} more frame(s) go to whichever cluster is fastest, as the jobs list "
                         "refreshes (keep Blender open, or run `braas-hpc wait " + status.name + "`)")
        return ". ".join(parts + [f"Warning: {w}" for w in self.warnings])


def check_request(request: SubmitRequest) -> None:
    """What a job over several clusters cannot do, in the panel's words (before anything is sent)."""
    if request.split_samples:
        raise UsageError("Split samples renders a still on one cluster: set it to 0, or choose no other cluster")
    if request.video:
        raise UsageError("Movie on the cluster is made by one cluster's finish step: turn it off for a job over "
                         "several clusters (make the movie from the downloaded frames)")


async def submit(request: SubmitRequest, presets: Sequence[str]) -> Submitted:
    return Submitted(*await group.submit(request, presets))


async def download(name: str, dest: Path, on_bytes: Callable[[int, int], None] | None = None
                   ) -> transfer.DownloadResult:
    """Every member's frames into one folder, with the film's summary.json beside them (core.group.download),
    as one result for the panel."""
    got = await group.download(name, dest, on_bytes)
    return transfer.DownloadResult(name, dest, sum(g.downloaded for g in got), sum(g.skipped for g in got),
                                   tuple(i for g in got for i in g.ignored), [r for g in got for r in g.refetched])


async def make_video(name: str, dest: Path, codec: str, on_bytes: Callable[[int, int], None]) -> video.VideoResult:
    """The film's movie: every member's frames into `dest`, then made here."""
    return await video.make_group_video(name, group.members(name), group.film_frames(name), dest, codec,
                                        progress=on_bytes)


def status_lines(status: GroupStatus) -> list[str]:
    """The group and each cluster's share, as lines."""
    out = [f"Job {status.name} over {len(status.members)} clusters: {status.state}, "
           f"{status.frames_done} of {status.frames_total} frames"
           + (f" ({status.pool} not handed out yet)" if status.pool else "")]
    out += [f"  {m.preset}: {member_text(m.state, m.frames_done, m.frames_held, m.pace.frame_s, m.pace.slots)}"
            + (f" (job {m.job})" if m.job else "") + (f", not answering: {m.error}" if m.error else "")
            for m in status.members]
    if status.missing:
        out.append(f"  given up: frames {format_frames(status.missing)}")
    return out


def member_text(state: str, done: int, held: int, frame_s: float, slots: int) -> str:
    pace = f"{frame_s:.1f} s/frame, {slots} at once" if frame_s else "pace not measured yet"
    return f"{state.lower()}, rendered {done}, holds {held} ({pace})"


async def report(name: str) -> str:
    """The group's share per cluster, then each member's settings and log tails."""
    records = await asyncio.to_thread(registry.list_jobs)
    found = await asyncio.to_thread(recorded, records)
    if name not in found.groups:
        raise UsageError(f"no job over several clusters named {name!r}")
    parts = ["\n".join(status_lines(recorded_statuses(found, records)[name]))]
    for job in group.members(name):
        parts.append(f"===== {job.preset.name} ({job.name})\n{(await logs.job_logs(job)).text()}")
    return "\n\n".join(parts)


def forget(name: str) -> list[registry.JobRecord]:
    """Remove an ended group and its member jobs from the registry (nothing on the clusters changes)."""
    records = registry.list_jobs()
    found = recorded(records)
    status = recorded_statuses(found, records)[name]
    if status.state not in TERMINAL:
        raise UsageError(f"job {name} is {status.state} as far as braas-hpc knows: cancel it first; nothing was "
                         "forgotten")
    gone = registry.forget(list(found.groups[name]["jobs"].values()), None)
    registry.forget_group(name)
    return gone
