"""What the add-on's operators run on the loop (no bpy here): each returns plain data for the main
thread to show. Errors of one cluster stay that cluster's: a refresh still shows the others."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..core import (
    costs,
    group,
    job_end,
    logs,
    monitor,
    notify,
    progress,
    recovery,
    registry,
    service,
    transfer,
    video,
    watch,
)
from ..core.cluster_blender import BlenderSource
from ..core.context import job_context
from ..core.errors import BraasError, HostKeyUnknown, UsageError
from ..core.group import GroupStatus, MemberStatus
from ..core.install import InstallReport, install
from ..core.jobs import FRAME_FILE, VIDEO_FILE, JobPaths
from ..core.presets import load_preset
from ..core.probe import ProbeReport, probe
from ..core.schedulers.base import TERMINAL
from ..core.spec import SubmitRequest, build_spec
from ..core.transport import transport_for
from ..core.workdir import Candidate, find_workdir
from . import groups

T = TypeVar("T")


@dataclass(frozen=True)
class JobRow:
    name: str
    preset: str
    state: str
    frames_done: int
    frames_total: int
    scheduler_ids: tuple[str, ...] = ()
    missing: tuple[int, ...] = ()
    created: float = 0.0
    thumbnail: str = ""  # the finish step's thumb.jpg, fetched once into the data dir
    preview: str = ""  # the newest frame's small JPEG while it runs (core.live), here
    progress: str = ""  # each running task within its frame, as a line
    # A job over several clusters (core.group): each cluster's share, the frames not handed out yet, and
    # what its last look did (batches handed out, chunks moved).
    group: bool = False
    members: tuple[MemberStatus, ...] = ()
    pool: int = 0
    moves: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.state not in TERMINAL


@dataclass
class Refresh:
    rows: list[JobRow] = field(default_factory=list)
    # preset (or the job, when its preset is gone) -> why its jobs could not be asked; the others are in rows
    errors: dict[str, str] = field(default_factory=dict)
    recoveries: list[recovery.Recovery] = field(default_factory=list)  # lost frames sent again just now
    notes: list[str] = field(default_factory=list)  # what downloading frames as they land had to say


def _row(status: monitor.JobStatus, created: float, thumbnail: Path | None = None) -> JobRow:
    return JobRow(status.job, status.preset, status.state, status.frames_done, status.frames_total,
                  status.scheduler_ids, status.missing, created, str(thumbnail) if thumbnail else "",
                  status.preview, ", ".join(t.text() for t in status.progress))


def group_row(status: GroupStatus, created: float) -> JobRow:
    return JobRow(status.name, " + ".join(m.preset for m in status.members), status.state, status.frames_done,
                  status.frames_total, tuple(m.job for m in status.members if m.job), status.missing, created,
                  group=True, members=status.members, pool=status.pool, moves=status.moves)


thumbnail_path = registry.thumbnail_path


async def _thumbnail(record: registry.JobRecord, status: monitor.JobStatus) -> Path | None:
    """The cluster's small JPEG of the job's last frame (made by the finish step), fetched once."""
    local = thumbnail_path(record.name)
    if local.is_file():
        return local
    if not status.summary:
        return None
    local.parent.mkdir(parents=True, exist_ok=True)
    transport = transport_for(load_preset(record.preset))
    try:
        await transport.get(f"{JobPaths(record.remote_root, record.name).job_dir}/thumb.jpg", local)
    except BraasError:
        return None  # no thumbnail (the finish step could not make one) costs nothing else
    return local


def registry_rows() -> list[JobRow]:
    """The jobs as last recorded (no network): what the panel shows at once after a restart."""
    rows = []
    records = registry.list_jobs()
    found = groups.recorded(records)
    for r in records:
        if r.name in found.members:  # shown as its group's row
            continue
        thumbnail = thumbnail_path(r.name)
        rows.append(JobRow(r.name, r.preset, r.state, len(r.spec.frames) if r.state == "COMPLETED" else 0,
                           len(r.spec.frames), r.scheduler_ids, (), r.created,
                           str(thumbnail) if thumbnail.is_file() else ""))
    rows += [group_row(status, found.created.get(name, 0.0))
             for name, status in groups.recorded_statuses(found, records).items()]
    return rows


async def load_rows() -> list[JobRow]:
    return await asyncio.to_thread(registry_rows)


async def _records() -> dict[str, registry.JobRecord]:
    return {r.name: r for r in await asyncio.to_thread(registry.list_jobs)}


async def refresh(names: Iterable[str] | None = None) -> Refresh:
    """Ask each cluster once about its jobs (all of them, or `names`, those still in the registry); and
    drive each group not ended once (core.group.look asks each of its member clusters once). A group's
    member jobs are left out of the jobs asked about: its look asks about them."""
    records = await _records()
    found = await asyncio.to_thread(groups.recorded, records.values())
    names = list(names) if names is not None else [*records, *found.groups]
    wanted = [n for n in names if n in records and n not in found.members]
    wanted_groups = [n for n in names if n in found.groups]
    if not wanted and not wanted_groups:
        return Refresh()
    clusters = {records[n].preset for n in wanted} | {m for n in wanted_groups for m in found.groups[n]["jobs"]}
    progress.report(f"asking {len(clusters)} cluster(s)")

    async def jobs() -> Refresh:
        return await _shown(*await recovery.status_and_recover(wanted), records) if wanted else Refresh()

    result, (statuses, errors) = await asyncio.gather(jobs(), groups.look(wanted_groups, found, records.values()))
    result.rows += [group_row(s, found.created.get(s.name, 0.0)) for s in statuses]
    result.errors.update(errors)
    return result


async def _shown(report: monitor.StatusReport, recoveries: list[recovery.Recovery],
                 records: dict[str, registry.JobRecord]) -> Refresh:
    result = Refresh(recoveries=recoveries)
    for error in report.errors:  # a removed preset: one line per job, each says how to forget it
        key = error.preset if len(error.jobs) != 1 or error.kind != "preset_missing" else error.jobs[0]
        result.errors[key] = str(error.error)
    for status in report.statuses:
        record = records.get(status.job)
        if record is not None:  # else forgotten meanwhile
            result.rows.append(_row(status, record.created, await _thumbnail(record, status)))
    return result


FOLLOW_POLL_MAX_S = 60.0


async def follow(names: list[str], deliver: Callable[[Refresh], None], first_s: float, growth: float,
                 download_to: dict[str, Path] | None = None) -> None:
    """The panel's follower: the active jobs `names` watched until each has ended (core.watch: lost frames
    resubmitted, the cluster's job watcher streaming what lands), each report handed to `deliver` (called
    on this loop; it must only queue). Polls as the panel always has: the first `first_s` from now, each
    next pause `growth` times the last, at most FOLLOW_POLL_MAX_S; frames the watcher sees land come in
    between with no poll, and a job's end brings its poll forward (core.events). The jobs in
    `download_to` have their new frames fetched into their folder as they land (core.job_end). Groups
    among `names` are driven beside them (_follow_groups); their member jobs are not polled apart."""
    await asyncio.sleep(first_s)
    records = await _records()
    found = await asyncio.to_thread(groups.recorded, records.values())
    # One forgotten meanwhile is not asked about.
    jobs = [name for name in names if name in records and name not in found.members]
    driven = [name for name in names if name in found.groups]
    followers = [*([_follow_jobs(jobs, deliver, first_s, growth, download_to or {})] if jobs else []),
                 *([_follow_groups(driven, deliver, first_s, growth, download_to or {})] if driven else [])]
    if len(followers) < 2:
        for follower in followers:
            await follower
        return
    try:
        async with asyncio.TaskGroup() as tasks:  # one failing stops the other
            for follower in followers:
                tasks.create_task(follower)
    except BaseExceptionGroup as failed:  # the follower's first error, as the panel shows one
        raise failed.exceptions[0] from None


async def _follow_jobs(names: list[str], deliver: Callable[[Refresh], None], first_s: float, growth: float,
                       folders: dict[str, Path]) -> None:
    polls = watch.watch(names, poll_max_s=FOLLOW_POLL_MAX_S, recover=True, first_s=first_s, growth=growth)
    notes: list[str] = []
    fetch = job_end.JobEnd(download_to=folders.__getitem__, counts=folders.__contains__, tell=notes.append)
    async with contextlib.aclosing(polls):
        async for report, recoveries in polls:
            await fetch.seen(report)
            shown = await _shown(report, recoveries, await _records())
            shown.notes, notes[:] = list(notes), []
            deliver(shown)


async def _follow_groups(names: list[str], deliver: Callable[[Refresh], None], first_s: float, growth: float,
                         folders: dict[str, Path]) -> None:
    """Each group driven (core.group.look: one status call per member cluster) until it has ended: the
    pause grows by `growth` up to groups.FOLLOW_MAX_S while nothing moves, and is `first_s` again after a
    look that handed out or moved frames. A group in `folders` has its frames fetched as they land."""
    pause, fetched = first_s, dict.fromkeys(names, 0)  # a download once frames are done, not before
    while names:
        records = await _records()
        found = await asyncio.to_thread(groups.recorded, records.values())
        statuses, errors = await groups.look(names, found, records.values())
        result = Refresh(rows=[group_row(s, found.created.get(s.name, 0.0)) for s in statuses], errors=errors)
        for status in statuses:
            if status.name in folders and status.frames_done > fetched[status.name]:
                fetched[status.name] = status.frames_done
                result.notes += await _fetch_group(status.name, folders[status.name])
        deliver(result)
        names = [s.name for s in statuses if s.state not in TERMINAL] + list(errors)
        pause = first_s if any(s.moves for s in statuses) else min(pause * growth, groups.FOLLOW_MAX_S)
        if names:
            await asyncio.sleep(pause)


async def _fetch_group(name: str, folder: Path) -> list[str]:
    try:
        got = await groups.download(name, folder)
    except BraasError as error:
        return [f"{name}: frames not downloaded: {error}"]
    return [f"{name}: {got.downloaded} new frame(s) in {folder}"] if got.downloaded else []


async def notify_desktop(text: str) -> bool:
    """The system's notification, where there is one (core.notify); never an error."""
    return await notify.notify("braas-hpc", text)


async def forget(name: str, ask: bool = True) -> registry.JobRecord | None:
    """Remove a job from the list (the registry and its cached thumbnail); nothing on the cluster
    changes. A job recorded as not ended is asked about first when `ask` (one that has ended since is
    then recorded so); one still pending or running, or not asked, is refused: cancel it first. A group
    goes with its member jobs, once it has ended (None is returned)."""
    if await asyncio.to_thread(group.is_group, name):
        await asyncio.to_thread(groups.forget, name)
        return None
    if ask and (await asyncio.to_thread(registry.get_job, name)).state not in TERMINAL:
        await monitor.status_report([name])
    (record,) = await asyncio.to_thread(registry.forget, [name], TERMINAL)
    return record


async def submit_group(request: SubmitRequest, presets: list[str]) -> groups.Submitted:
    """One animation over the clusters of `presets` (core.group): each gets its first batch now."""
    return await groups.submit(request, presets)


async def submit(request: SubmitRequest) -> service.SubmitResult:
    """A cluster job; or, on the `local` preset, the render itself on this machine (Abort cancels it)."""
    built = build_spec(request)
    if not built[1].is_local:
        expected = await costs.for_request(request, built)  # no render here; the allocation where the site has one
        result = await service.submit(request, built, expected.estimate.to_json() if expected.estimate else None)
        return dataclasses.replace(result, warnings=(*result.warnings, *expected.warnings))

    def rendered(done: int, total: int, _message: str) -> None:
        progress.report("rendering", done, total)

    return await watch.render_local(request, built, rendered)


async def estimate(request: SubmitRequest) -> costs.Costs:
    """The panel's Estimate: the scene's earlier jobs, else a calibration render here; and the allocation."""
    return await costs.for_request(request, build_spec(request, dry_run=True), calibrate=True)


@dataclass(frozen=True)
class Downloaded:
    result: transfer.DownloadResult
    last_frame: Path | None  # the newest frame file here, for the list's thumbnail
    video: Path | None = None  # a movie of the frames that came with them


def last_frame(folder: Path) -> Path | None:
    frames = sorted(p for p in folder.iterdir() if FRAME_FILE.match(p.name)) if folder.is_dir() else []
    return frames[-1] if frames else None


async def download(name: str, dest: Path) -> Downloaded:
    def on_bytes(done: int, total: int) -> None:
        progress.report("downloading", done, total)

    if await asyncio.to_thread(group.is_group, name):  # every member's frames, into one folder
        result = await groups.download(name, dest, on_bytes)
    else:
        result = await transfer.download(job_context(name), dest, on_bytes)
    movies = sorted(p for p in dest.iterdir() if VIDEO_FILE.match(p.name)) if dest.is_dir() else []
    return Downloaded(result, await asyncio.to_thread(last_frame, dest), movies[-1] if movies else None)


async def make_video(name: str, dest: Path, codec: str) -> video.VideoResult:
    def on_bytes(done: int, total: int) -> None:
        progress.report("downloading", done, total)

    if await asyncio.to_thread(group.is_group, name):  # every member's frames, the movie made here
        return await groups.make_video(name, dest, codec, on_bytes)
    return await video.make_video(job_context(name), dest, codec, progress=on_bytes)


async def _one_cluster(name: str, action: str) -> None:
    if await asyncio.to_thread(group.is_group, name):
        raise UsageError(f"{action} is for a job on one cluster; {name} runs over several")


async def resubmit_missing(name: str) -> service.SubmitResult:
    # A group hands its lost frames to its clusters again by itself (core.group).
    await _one_cluster(name, "Resubmit Missing Frames")
    result, _plan = await recovery.resubmit_missing(job_context(name))
    return result


async def job_report(name: str) -> str:
    """The job's settings, state and the last lines of each of its logs on the cluster (of each member's,
    for a group)."""
    if await asyncio.to_thread(group.is_group, name):
        return await groups.report(name)
    return (await logs.job_logs(job_context(name))).text()


async def cancel(name: str) -> tuple[str, ...]:
    if await asyncio.to_thread(group.is_group, name):  # every member; nothing more handed out
        return await group.cancel(name)
    return await service.cancel(job_context(name))


async def test_presets(names: list[str]) -> dict[str, ProbeReport | str]:
    """Every preset at once; each answers for itself (a report, or why it failed)."""
    return await each_cluster(names, probe)


async def each_cluster(names: list[str], action: Callable[[str], Awaitable[T]]) -> dict[str, T | str]:
    """`action` on every cluster at once; each answers for itself (its result, or why it failed), and
    the status line counts the clusters that have answered. An unknown host key is raised instead, once
    all have answered: it is the user's question (the trust popup), and the whole action runs again
    after a yes."""
    answered = 0
    unknown: list[HostKeyUnknown] = []
    progress.report("clusters answered", 0, len(names))

    async def one(name: str) -> T | str:
        nonlocal answered
        try:
            return await action(name)
        except HostKeyUnknown as error:
            unknown.append(error)
            return str(error)
        except BraasError as error:
            return str(error)
        finally:
            answered += 1
            progress.report("clusters answered", answered, len(names))

    results = await asyncio.gather(*(one(n) for n in names))
    if unknown:
        raise unknown[0]
    return dict(zip(names, results, strict=True))


async def find_workdirs(names: list[str]) -> dict[str, list[Candidate] | str]:
    """Each cluster's candidate working directories (site command, $SCRATCH/$WORK, documented
    patterns), checked for existence and write access; shown to the user, never set by themselves."""
    async def one(name: str) -> list[Candidate]:
        preset = load_preset(name)
        return await find_workdir(preset, transport_for(preset))

    return await each_cluster(names, one)


async def install_all(names: list[str], source: BlenderSource | None) -> dict[str, InstallReport | str]:
    """The cluster scripts (and Blender, when a source is given) on every cluster at once."""
    return await each_cluster(names, lambda name: install(name, source))
