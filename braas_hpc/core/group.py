"""One animation over several clusters: the group's record, its member jobs, and the driver that hands
out frames and moves them (core.fanout decides; this module acts on the clusters).

Each cluster of a group runs an ordinary job of its own (a member: `<group>.<preset>`), whose first round is
the cluster's first batch; every later batch is a new round of it. A member's tasks claim their chunk
before rendering it, so the driver can take a chunk no task has started for another cluster (it claims
the chunk first, leaving `moved` in the claim), and no frame is rendered twice. Frames a member lost go
back to the group's pool (at most `retries` times each), not to a recovery round of the member's own.

The driver runs whenever someone looks: `braas-hpc wait GROUP`, `status GROUP`, the dashboard, the panel.
Frames not handed out yet wait in the pool until then; those handed out render whatever happens here
(the laptop closed). Two processes looking at once never both drive: the record is leased.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import batch, monitor, registry, service
from .context import JobContext, context_of, job_context
from .errors import BraasError, UsageError, WaitTimedOut
from .fanout import Group, Pace
from .frames import format_frames
from .jobs import make_job_name
from .monitor import JobStatus
from .presets import valid_name
from .recovery import markers_argv, read_markers
from .schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TERMINAL
from .spec import SubmitRequest, build_spec

log = logging.getLogger(__name__)

LEASE_S = 600.0  # a driver that died holding the record frees it after this long
POLL_S = 5.0  # between looks while waiting: one status call per cluster each time
_STARTED = {"running", "done", "failed"}  # marker states of a task that claimed its chunk here

# Takes chunks away from a member: for each chunk (its frames, comma-separated), a claim named by its
# first frame with `moved` in it; prints the first frame of each chunk taken. A chunk whose task claimed
# it first stays (render_task.py claims the same way).
_TAKE_AWAY = ('d=$1; shift; mkdir -p -- "$d" || exit 1; for c in "$@"; do f=${c%%,*}; '
              'mkdir -- "$d/$f" 2>/dev/null && : > "$d/$f/moved" && echo "$f"; done; exit 0')


def member_name(group: str, preset: str) -> str:
    return f"{group}.{preset}"


@dataclass(frozen=True)
class MemberStatus:
    preset: str
    job: str  # "" until the cluster got its first batch
    state: str
    frames_done: int  # of the film's frames, rendered on this cluster
    frames_held: int  # handed to it and not rendered yet
    pace: Pace

    def to_json(self) -> dict[str, object]:
        return {"preset": self.preset, "job": self.job, "state": self.state, "frames_done": self.frames_done,
                "frames_held": self.frames_held, "seconds_per_frame": round(self.pace.frame_s, 3),
                "slots": self.pace.slots, "queue_seconds": round(self.pace.queue_s, 1)}


@dataclass(frozen=True)
class GroupStatus:
    name: str
    state: str
    frames_done: int
    frames_total: int
    members: tuple[MemberStatus, ...]
    pool: int  # frames not handed out yet
    missing: tuple[int, ...] = ()  # frames given up (lost more often than the retries allow), once ended
    moves: tuple[str, ...] = ()  # what this look did: batches handed out, chunks moved

    def to_json(self) -> dict[str, object]:
        return {"job": self.name, "group": True, "state": self.state, "frames_done": self.frames_done,
                "frames_total": self.frames_total, "pool": self.pool, "missing": format_frames(self.missing),
                "members": [m.to_json() for m in self.members], "moves": list(self.moves)}


@dataclass
class _Look:
    """What one member's cluster said at one look."""

    preset: str
    status: JobStatus | None = None
    frames: frozenset[int] = frozenset()  # what the member's record says it holds
    markers: list[dict[str, object]] = field(default_factory=list)
    error: str = ""
    job: str = ""
    answers: batch.Answers = field(default_factory=batch.Answers)  # the caller's `also` steps' answers


@dataclass(frozen=True)
class MemberLook:
    """What one member's cluster said at a look, for a face that shows the member jobs themselves (the
    dashboard): its job's status (None: the cluster did not answer, `error` says why), its task markers,
    and the answers of the steps the caller asked to bring in the same call (empty on this computer)."""

    preset: str
    job: str
    status: JobStatus | None
    markers: tuple[dict[str, object], ...]
    answers: batch.Answers
    error: str = ""


def is_group(name: str) -> bool:
    return registry.find_group(name) is not None


def _request_json(request: SubmitRequest) -> dict[str, object]:
    data = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name != "scene_settings"}
    return {**data, "scene": str(request.scene)}


def _request_of(data: dict[str, object], preset: str, frames: Sequence[int], group: str) -> SubmitRequest:
    known = {f.name for f in dataclasses.fields(SubmitRequest)}
    fields = {k: v for k, v in data["request"].items() if k in known}  # type: ignore[union-attr]
    return SubmitRequest(**{**fields, "scene": Path(fields["scene"]), "preset": preset,
                            "frames": format_frames(frames), "group": group})


def _check(request: SubmitRequest, presets: Sequence[str]) -> None:
    if request.split_samples:
        raise UsageError("a split still renders on one cluster: --split-samples cannot go with several presets")
    if request.video:
        raise UsageError("a movie of a job over several clusters is made here once its frames are downloaded: "
                         "leave out --video and run `braas-hpc video JOB` after `download`")
    for preset in presets:
        if not valid_name(preset):
            raise UsageError(f"not a preset name: {preset!r}")


async def submit(request: SubmitRequest, presets: Sequence[str], estimates: dict[str, Pace] | None = None
                 ) -> tuple[GroupStatus, list[service.SubmitResult], list[str]]:
    """Spread one animation over the clusters of `presets`: each gets its first batch now (the scene
    uploaded to each once); the rest is handed out as they render. Returns the group's status, the
    member submissions made, and warnings (a cluster that could not take its batch: its frames went
    back to the pool)."""
    presets = [p.strip() for p in presets if p.strip()]
    _check(request, presets)
    first_spec, _ = build_spec(dataclasses.replace(request, preset=presets[0]))  # the film's frames
    for preset in presets[1:]:
        build_spec(dataclasses.replace(request, preset=preset))  # every preset accepts the request, before any upload
    name = make_job_name(Path(first_spec.scene), request.project)
    plan = Group.plan(name, first_spec.frames, request.chunk, presets, estimates)
    data: dict[str, object] = {"request": _request_json(request), "plan": plan.to_json(), "jobs": {},
                               "given_at": {}, "lost": {}, "given_up": [], "cancelled": False}
    registry.add_group(name, data)
    batches = plan.initial()
    results, warnings = [], []
    for preset, chunks in batches.items():
        if not chunks:
            continue
        try:
            results.append(await _give(data, plan, preset, chunks))
        except BraasError as exc:
            _give_back(plan, preset, chunks)
            warnings.append(f"{preset} could not take its frames ({exc}); they go to the other clusters")
    data["plan"] = plan.to_json()
    registry.put_group(name, data)
    if not results:
        registry.forget_group(name)
        raise BraasError("no cluster of the group took its frames: " + "; ".join(warnings))
    return await look(name, drive=False), results, warnings


async def _give(data: dict, plan: Group, preset: str, chunks: list[tuple[int, ...]]) -> service.SubmitResult:
    """Chunks to a member: its first submission, or a new round of its job."""
    jobs: dict[str, str] = data["jobs"]
    frames = sorted(f for c in chunks for f in c)
    if preset not in jobs:
        request = _request_of(data, preset, frames, plan.name)
        spec, preset_ = build_spec(request)
        spec = dataclasses.replace(spec, name=member_name(plan.name, preset), tasks=tuple(chunks))
        result = await service.submit(request, (spec, preset_))
        jobs[preset] = result.job
    else:
        job = job_context(jobs[preset])
        result = await service.submit_round(job, tuple(chunks))
        _set_frames(jobs[preset], plan, preset)
    now = time.time()  # submitted: the queue wait starts
    for chunk in chunks:
        data["given_at"][str(chunk[0])] = now
    return result


def _give_back(plan: Group, preset: str, chunks: Sequence[tuple[int, ...]]) -> None:
    member = plan.member(preset)
    member.handed = [c for c in member.handed if c not in chunks]
    member.batches -= 1 if chunks else 0
    plan.pool = sorted([*chunks, *plan.pool])


def _set_frames(job: str, plan: Group, preset: str) -> None:
    held = sorted(plan.member(preset).handed)
    registry.set_frames(job, tuple(sorted(f for c in held for f in c)), tuple(held))


async def _take_away(job: JobContext, chunks: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Claim `chunks` on the member's cluster for another cluster; the ones its tasks had not claimed."""
    argv = ["sh", "-c", _TAKE_AWAY, "sh", job.paths.claims_dir, *(",".join(map(str, c)) for c in chunks)]
    done = await job.transport.run(argv, check=False)
    taken = {line.strip() for line in done.stdout.splitlines()}
    return [c for c in chunks if str(c[0]) in taken]


async def _look_at(preset: str, job: str, also: Callable[[JobContext], Sequence[batch.Step]] | None = None) -> _Look:
    try:
        context = job_context(job)
        extra = list(also(context)) if also is not None else []
        status, ahead = await monitor.job_status_and(
            context, [batch.Step("all_markers", markers_argv(context.paths)), *extra])
        markers = await read_markers(context.transport, context.paths, ahead)
        return _Look(preset, status, frozenset(context.record.spec.frames), markers, job=job, answers=ahead)
    except BraasError as exc:  # one cluster not answering does not stop the others
        return _Look(preset, error=str(exc), job=job)


def _began(marker: dict[str, object]) -> float:
    """When the task's job script started (its start-up counts), else when Blender began the task."""
    began = marker.get("began")
    return float(began) if isinstance(began, (int, float)) and not isinstance(began, bool) else marker["started"]


def _pace(markers: list[dict[str, object]], given_at: dict[str, float], now: float) -> Pace:
    """A member's pace as its tasks' markers show it (0 where not known yet): seconds per frame of a
    whole task (module loads and Blender's start included), tasks at once, and a batch's queue wait."""
    started = [m for m in markers if m.get("state") in _STARTED and m.get("frames") and m.get("started")]
    done = [m for m in started if m.get("state") == "done" and m.get("finished")]
    frame_s = statistics.fmean((m["finished"] - _began(m)) / len(m["frames"]) for m in done) if done else 0.0
    spans = sorted((_began(m), m.get("finished") or now) for m in started)
    # Overlapping by more than a second (a job script's start is known to the second): at once.
    slots = max((sum(1 for s, e in spans if s <= start < e - 1) for start, _ in spans), default=0)
    first_start: dict[float, float] = {}  # a batch's hand-out time -> its first task's start
    for m in started:
        at = given_at.get(str(m["frames"][0]))
        if at is not None:
            first_start[at] = min(first_start.get(at, _began(m)), _began(m))
    waits = [max(0.0, s - at) for at, s in first_start.items()]
    return Pace(frame_s, slots, statistics.fmean(waits) if waits else 0.0)


async def look(name: str, drive: bool = True, also: Callable[[JobContext], Sequence[batch.Step]] | None = None,
               seen: list[MemberLook] | None = None) -> GroupStatus:
    """The group's state; with `drive` (unless another process drives it now), also hand out and move
    frames as core.fanout decides. One status call per cluster, plus one per batch given or taken.
    `also`: more steps for a member's status call (its log tails...), whose answers, with the member's
    status and markers, are put in `seen` (one MemberLook per member with a job)."""
    data = registry.take_group(name, LEASE_S) if drive else None
    driving = data is not None
    data = data or registry.get_group(name)
    try:
        plan = Group.from_json(data["plan"])
        looks = await asyncio.gather(*(_look_at(p, j, also) for p, j in data["jobs"].items()))
        by_preset = {look_.preset: look_ for look_ in looks}
        if seen is not None:
            seen += [MemberLook(x.preset, x.job, x.status, tuple(x.markers), x.answers, x.error) for x in looks]
        moves = _observe(data, plan, by_preset) if driving else []
        if driving and not data["cancelled"]:
            moves += await _hand_out(data, plan, by_preset)
        data["plan"] = plan.to_json()
        return _status(name, data, plan, by_preset, tuple(moves))
    finally:
        if driving:
            registry.put_group(name, data)


def _latest_markers(look_: _Look) -> dict[tuple[int, ...], dict[str, object]]:
    """Each chunk's newest marker on this member (a chunk given back to the same cluster has two); a
    moved chunk's marker says only that it was taken."""
    latest: dict[tuple[int, ...], dict[str, object]] = {}
    for m in look_.markers:
        if m.get("state") in _STARTED and m.get("frames"):
            chunk = tuple(m["frames"])
            if chunk not in latest or m["started"] >= latest[chunk]["started"]:
                latest[chunk] = m
    return latest


def _observe(data: dict, plan: Group, looks: dict[str, _Look]) -> list[str]:
    """What the members did since the last look; frames they lost go back to the pool as chunks of their
    own (a chunk's rendered frames stay done where they are)."""
    now, notes = time.time(), []
    retries = int(data["request"].get("retries", 2))
    for preset, look_ in looks.items():
        if look_.status is None:
            continue
        member, missing = plan.member(preset), set(look_.status.missing)
        markers = _latest_markers(look_)
        job_over = look_.status.state in TERMINAL
        done, lost = [], []
        for chunk in member.handed:
            marker = markers.get(chunk, {})
            # A task's own word first: the frame listing of this look may predate a frame it just wrote.
            if marker.get("state") == "done" or (set(chunk) <= look_.frames and not set(chunk) & missing):
                done.append(chunk)
            elif marker.get("state") == "failed" or job_over:
                kept = tuple(f for f in chunk if f in set(marker.get("rendered", ())) | set(marker.get("skipped", ()))
                             or (job_over and f in look_.frames and f not in missing))
                done += [kept] if kept else []
                lost.append((chunk, kept, tuple(f for f in chunk if f not in kept)))
        if lost and not data["cancelled"]:
            member.handed = [c for c in member.handed if c not in {chunk for chunk, _, _ in lost}]
            member.handed += [kept for _, kept, _ in lost if kept]
            again = []
            for _, _, frames in lost:
                count = data["lost"][str(frames[0])] = data["lost"].get(str(frames[0]), 0) + 1
                (again if count <= retries else data["given_up"]).append(frames)
            plan.pool = sorted([*(tuple(c) for c in again), *plan.pool])
            _set_frames(data["jobs"][preset], plan, preset)
            lost_frames = format_frames(f for _, _, frames in lost for f in frames)
            notes.append(f"{preset} lost frames {lost_frames}: "
                         + ("back to the group" if again else "given up (no retries left)"))
        plan.observe(preset, done, _pace(look_.markers, data["given_at"], now))
    return notes


async def _hand_out(data: dict, plan: Group, looks: dict[str, _Look]) -> list[str]:
    """Every due cluster gets chunks: taken from another that has not started them, else from the pool."""
    now, notes = time.time(), []
    started = {p: set(_latest_markers(look_)) for p, look_ in looks.items()}
    running = {p: [m for m in look_.markers if m.get("state") == "running"] for p, look_ in looks.items()}
    reachable = [m.preset for m in plan.members if m.preset not in looks or looks[m.preset].status is not None]
    for preset in sorted(reachable, key=plan.throughput, reverse=True):
        member = plan.member(preset)
        held = [c for c in member.handed if c not in member.done]
        if not plan.due(preset, held):
            continue
        waiting = {m.preset: [c for c in m.handed if c not in m.done and c not in started.get(m.preset, set())]
                   for m in plan.members if m.preset in reachable}
        busy = {p: max((plan.pace(p).frame_s * len(m["frames"]) - (now - m["started"]) for m in ms), default=0.0)
                for p, ms in running.items()}
        queued = {p: now - min((data["given_at"].get(str(c[0]), now) for c in cs), default=now)
                  for p, cs in waiting.items()}
        victim, chunks = plan.next_batch(preset, waiting, busy, queued)
        if victim is not None:
            taken = await _take_away(job_context(data["jobs"][victim]), chunks)
            if kept := [c for c in chunks if c not in taken]:  # its tasks claimed them first: they stay
                plan.member(preset).handed = [c for c in plan.member(preset).handed if c not in kept]
                plan.member(victim).handed.extend(kept)
                plan.moved = [c for c in plan.moved if c not in kept]
            chunks = taken
            if taken:
                _set_frames(data["jobs"][victim], plan, victim)
        if not chunks:
            continue
        try:
            await _give(data, plan, preset, chunks)
        except BraasError as exc:
            _give_back(plan, preset, chunks)
            notes.append(f"{preset} could not take frames {format_frames(f for c in chunks for f in c)}: {exc}")
            continue
        source = f" from {victim}" if victim else ""
        notes.append(f"{preset} got frames {format_frames(f for c in chunks for f in c)}{source}")
    return notes


def _status(name: str, data: dict, plan: Group, looks: dict[str, _Look], moves: tuple[str, ...]) -> GroupStatus:
    frames_total = sum(len(c) for c in plan.pool) + sum(len(c) for m in plan.members for c in m.handed)
    given_up = [tuple(c) for c in data["given_up"]]  # frames lost more often than the retries allow
    frames_total += sum(len(c) for c in given_up)
    members, done_total, states = [], 0, []
    for m in plan.members:
        look_ = looks.get(m.preset)
        done = sum(len(c) for c in m.done)
        held = sum(len(c) for c in m.handed) - done
        state = (look_.status.state if look_ and look_.status else "UNREACHABLE" if look_ else "WAITING")
        members.append(MemberStatus(m.preset, data["jobs"].get(m.preset, ""), state, done, held, m.pace))
        done_total += done
        if look_ and look_.status:
            states.append(look_.status.state)
    missing = tuple(sorted(f for c in given_up for f in c))
    if data["cancelled"]:
        state = CANCELLED
    elif plan.complete and all(s in TERMINAL for s in states):
        state = COMPLETED if not missing else FAILED
    elif any(s == RUNNING for s in states) or done_total:
        state = RUNNING
    else:
        state = PENDING
    return GroupStatus(name, state, done_total, frames_total, tuple(members), sum(len(c) for c in plan.pool),
                       missing, moves)


async def wait(name: str, poll_s: float = POLL_S, timeout_s: float | None = None,
               on_status: Callable[[GroupStatus], None] | None = None) -> GroupStatus:
    """Drive the group until it ends (or `timeout_s`)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = await look(name)
        if on_status is not None:
            on_status(status)
        if status.state in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimedOut(f"group {name} still {status.state} after {timeout_s:g} s")
        await asyncio.sleep(poll_s)


def members(name: str) -> list[JobContext]:
    data = registry.get_group(name)
    return [context_of(registry.get_job(job)) for job in data["jobs"].values()]


async def cancel(name: str) -> tuple[str, ...]:
    """Cancel every member; nothing more is handed out."""
    data = registry.get_group(name)
    data["cancelled"] = True
    registry.put_group(name, data)
    ids: list[str] = []
    for job in members(name):
        ids += await service.cancel(job)
    return tuple(ids)


__all__ = ["FAILED", "GroupStatus", "MemberLook", "MemberStatus", "cancel", "is_group", "look", "member_name",
           "members", "submit", "wait"]
