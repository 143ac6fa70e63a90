"""One animation over several clusters: the group's record, its member jobs, and the driver that hands
out frames and moves them (core.fanout decides; this module acts on the clusters).

Each cluster of a group runs an ordinary job of its own (a member: `<group>.<preset>`), whose first round is
the cluster's first batch; every later batch is a new round of it. A member's tasks claim their chunk
before rendering it, so the driver can take a chunk no task has started for another cluster (it claims
the chunk first, leaving `moved` in the claim), and no frame is rendered twice; the chunk's task is then
cancelled on its cluster where the scheduler can cancel one task alone (its marker says `moved`, as the
task itself would have written on finding the claim). Frames a member lost go
back to the group's pool (at most `retries` times each), not to a recovery round of the member's own.

The driver runs whenever someone looks: `braas-hpc wait GROUP`, `status GROUP`, the dashboard, the panel.
Frames not handed out yet wait in the pool until then; those handed out render whatever happens here
(the laptop closed). Two processes looking at once never both drive: the record is leased. Once every
frame is done, what members still queue (their finish steps) is cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from . import batch, costs, monitor, registry, service, transfer
from .context import JobContext, context_of, job_context
from .errors import BraasError, ConnectionFailed, HostKeyUnknown, UsageError, WaitTimedOut
from .fanout import Group, Pace
from .frames import format_frames
from .group_state import GroupStatus, Look, MemberStatus, began, latest_markers, observe, pace_of, set_frames, status_of
from .jobs import JobSpec, make_job_name
from .presets import Preset, valid_name
from .recovery import markers_argv, read_markers
from .scene_settings import read_scene_settings
from .schedulers.base import COMPLETED, FAILED, TERMINAL, Round
from .spec import SubmitRequest, build_spec
from .transport import transport_for
from .transport.base import Progress

log = logging.getLogger(__name__)

LEASE_S = 600.0  # a driver that died holding the record frees it after this long
POLL_S = 5.0  # between looks while waiting: one status call per cluster each time
REST_S = 300.0  # a cluster that could not be reached to take frames is not tried again for this long

# Takes chunks away from a member: for each chunk (its first frame, its task's marker name or "", that
# marker), a claim named by the first frame with `moved` in it, and the marker; prints the first frame of
# each chunk taken. A chunk whose task claimed it first stays (render_task.py claims the same way).
_TAKE_AWAY = ('d=$1; s=$2; shift 2; mkdir -p -- "$d" "$s" || exit 1; while [ $# -ge 3 ]; do f=$1; m=$2; j=$3; '
              'shift 3; mkdir -- "$d/$f" 2>/dev/null || continue; : > "$d/$f/moved"; '
              'if [ -n "$m" ]; then printf "%s\n" "$j" > "$s/.$m.$$" && mv -f -- "$s/.$m.$$" "$s/$m"; fi; '
              'echo "$f"; done; exit 0')


def member_name(group: str, preset: str) -> str:
    return f"{group}.{preset}"


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
    # Every preset accepts the request before anything is uploaded anywhere.
    built = {preset: build_spec(dataclasses.replace(request, preset=preset)) for preset in presets}
    first_spec = built[presets[0]][0]  # the film's frames
    name = make_job_name(Path(first_spec.scene), request.project)
    unreachable = await _reach_all({name: preset for name, (_, preset) in built.items()})
    reached = {p: spec_preset for p, spec_preset in built.items() if p not in unreachable}
    known = estimates if estimates is not None else await _estimates(request, reached)
    plan = Group.plan(name, first_spec.frames, request.chunk, presets, known)
    data: dict[str, object] = {"request": _request_json(request), "plan": plan.to_json(), "jobs": {},
                               "given_at": {}, "lost": {}, "given_up": [], "cancelled": False,
                               "resting": {p: rest_record(exc) for p, exc in unreachable.items()}}
    registry.add_group(name, data)
    results, warnings = [], []
    for preset, exc in unreachable.items():
        warnings.append(f"{preset} could not be reached ({exc}); its frames go to the other clusters (it is "
                        f"tried again in {REST_S / 60:g} min)")
    for member in plan.members:  # each its first batch in turn (Group.initial), on record once submitted
        if member.preset in unreachable:
            continue
        chunks = plan.hand_out(member.preset)
        if not chunks:
            continue
        try:
            results.append(await _give(data, plan, member.preset, chunks))
        except BraasError as exc:
            _give_back(plan, member.preset, chunks)
            warnings.append(f"{member.preset} could not take its frames ({exc}); they go to the other clusters")
        data["plan"] = plan.to_json()
        registry.put_group(name, data)
    if not results:
        registry.forget_group(name)
        raise BraasError("no cluster of the group took its frames: " + "; ".join(warnings))
    return await look(name, drive=False), results, warnings


def rest_record(exc: BraasError) -> dict[str, object]:
    """A cluster that could not be reached to take frames: not tried again until then, and why."""
    return {"until": time.time() + REST_S, "why": str(exc)}


async def _reach_all(presets: dict[str, Preset]) -> dict[str, ConnectionFailed]:
    """Every cluster reached before anything is made: a host whose key is not known yet is the user's
    question (its fingerprint shown; the submission runs again after a yes), not a cluster silently left
    out of the group. Returns the clusters that could not be reached otherwise, with why: they get no
    frames now (each would cost its connection time-out again) and are tried again later."""
    reached = await asyncio.gather(*(transport_for(p).connect() for p in presets.values()), return_exceptions=True)
    for outcome in reached:
        if isinstance(outcome, HostKeyUnknown):
            raise outcome
    return {name: outcome for name, outcome in zip(presets, reached, strict=True)
            if isinstance(outcome, ConnectionFailed)}


async def _estimates(request: SubmitRequest, built: dict[str, tuple[JobSpec, Preset]]) -> dict[str, Pace]:
    """Each cluster's pace from the scene's finished jobs there (or the user's own `--estimate` of it):
    with them the first batches are sized right (core.fanout). A cluster without any: 0, learnt as it renders."""
    spec = next(iter(built.values()))[0]
    settings = request.scene_settings or await asyncio.to_thread(read_scene_settings, Path(spec.scene))
    found = {}
    for name, (spec, preset) in built.items():
        try:
            rate, _ = await costs.job_rate(spec, preset, settings.resolution_percentage, calibrate=False)
        except BraasError as exc:  # no estimate is no reason not to render
            log.info("no estimate for %s: %s", name, exc)
            continue
        if rate is not None:
            found[name] = Pace(rate.frame_seconds + (rate.task_seconds + rate.gap_seconds) / spec.chunk,
                               spec.max_parallel)
    return found


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
        set_frames(jobs[preset], plan, preset)
    _place(data, preset, result, chunks)
    now = time.time()  # submitted: the queue wait starts
    for chunk in chunks:
        data["given_at"][str(chunk[0])] = now
    return result


def _give_back(plan: Group, preset: str, chunks: Sequence[tuple[int, ...]]) -> None:
    member = plan.member(preset)
    member.handed = [c for c in member.handed if c not in chunks]
    member.batches -= 1 if chunks else 0
    plan.pool = sorted([*chunks, *plan.pool])


async def _take_away(job: JobContext, chunks: Sequence[tuple[int, ...]], placed: dict[str, dict]
                     ) -> list[tuple[int, ...]]:
    """Claim `chunks` on the member's cluster for another cluster; the ones its tasks had not claimed.
    Their tasks are marked moved and cancelled (one more call), so none starts Blender for nothing."""
    now, argv = time.time(), ["sh", "-c", _TAKE_AWAY, "sh", job.paths.claims_dir, job.paths.status_dir]
    for chunk in chunks:
        where = placed.get(str(chunk[0]))
        argv += [str(chunk[0]), *(_moved_marker(chunk, where, now) if where else ("", ""))]
    done = await job.transport.run(argv, check=False)
    answered = {line.strip() for line in done.stdout.splitlines()}
    taken = [c for c in chunks if str(c[0]) in answered]
    ids = [i for c in taken if (i := _task_to_cancel(job, placed.get(str(c[0])))) is not None]
    if ids:  # a task that started meanwhile finds the claim and ends; one that ended is not there
        await job.transport.run(job.scheduler.cancel_argv(ids), check=False)
    return taken


def _place(data: dict, preset: str, result: service.SubmitResult, chunks: Sequence[tuple[int, ...]]) -> None:
    """Where each chunk's task is: its member, round and array index, and the scheduler id that names it
    (an array's, or the task's own job where the site runs one job per task)."""
    ids = result.scheduler_ids
    placed = data.setdefault("placed", {})
    for index, chunk in enumerate(chunks, start=1):
        where = {"preset": preset, "chunk": list(chunk), "round": result.round, "task": index}
        if len(ids) == len(chunks):  # one job per task (or an array of one): its id is the task's own
            placed[str(chunk[0])] = {**where, "id": ids[index - 1], "whole": True}
        elif len(ids) == 1:
            placed[str(chunk[0])] = {**where, "id": ids[0], "whole": False}


def _moved_marker(chunk: tuple[int, ...], where: dict, now: float) -> tuple[str, str]:
    """The marker name and text of a chunk's task whose chunk moved, as the task would write it."""
    name = Round(int(where["round"]), 0).marker_name(int(where["task"]))
    marker = {"task": where["task"], "frames": list(chunk), "rendered": [], "skipped": [], "failed": [],
              "timings": {}, "started": now, "finished": now, "exit_code": 0, "state": "moved"}
    return name, json.dumps(marker)


def _task_to_cancel(job: JobContext, where: dict | None) -> str | None:
    if where is None:
        return None
    return str(where["id"]) if where["whole"] else job.scheduler.task_id(str(where["id"]), int(where["task"]))


Steps = Callable[[JobContext], Sequence[batch.Step]]  # more steps for a member's status call, by its job


def look_steps(context: JobContext, also: Steps | None = None) -> list[batch.Step]:
    """What a member's look asks its cluster beside the member's status: its task markers, and the
    caller's own steps (`also`)."""
    return [batch.Step("all_markers", markers_argv(context.paths)), *(also(context) if also else ())]


async def look_from(context: JobContext, status: monitor.JobStatus, ahead: batch.Answers) -> Look:
    """A member's look from its status and the answers of its look_steps (markers not among them are
    read in a call of their own)."""
    markers = await read_markers(context.transport, context.paths, ahead)
    return Look(context.record.preset, status, frozenset(context.record.spec.frames), markers, job=context.name,
                answers=ahead)


def unanswered(preset: str, job: str, exc: BraasError) -> Look:
    """A member whose cluster did not answer. An unknown host key is also a question for the user, where
    one can answer (look's ask_host_keys)."""
    return Look(preset, error=str(exc), job=job, unknown_host=exc if isinstance(exc, HostKeyUnknown) else None)


async def _look_at(preset: str, job: str, also: Steps | None = None) -> Look:
    try:
        context = job_context(job)
        status, ahead = await monitor.job_status_and(context, look_steps(context, also))
        return await look_from(context, status, ahead)
    except BraasError as exc:  # one cluster not answering does not stop the others
        return unanswered(preset, job, exc)


async def _markers_at(preset: str, job: str) -> Look:
    """A member's task markers alone (no scheduler query: what a summary needs), or why its cluster did not answer."""
    try:
        context = job_context(job)
        return Look(preset, markers=await read_markers(context.transport, context.paths), job=job)
    except BraasError as exc:
        return Look(preset, error=str(exc), job=job)


async def look(name: str, drive: bool = True, also: Steps | None = None, seen: list[Look] | None = None,
               ask_host_keys: bool = False, looked: Mapping[str, Look] | None = None) -> GroupStatus:
    """The group's state; with `drive` (unless another process drives it now), also hand out and move
    frames as core.fanout decides. One status call per cluster, plus one per batch given or taken.
    `also`: more steps for each member's status call (its log tails...), whose answers, with the member's
    status and markers, are put in `seen` (one Look per member with a job: a face that shows the members).
    `ask_host_keys`: a member host whose key is not known yet raises HostKeyUnknown once the look is
    recorded (the caller asks the user and looks again), instead of showing that member unreachable.
    `looked`: members' looks the caller made already (by member job; their clusters' calls carried them
    beside other jobs' status), not asked again."""
    data = registry.take_group(name, LEASE_S) if drive else None
    driving = data is not None
    data = data or registry.get_group(name)
    plan = Group.from_json(data["plan"])
    try:
        made = looked or {}
        looks = list(await asyncio.gather(*(_look_at(p, j, also) for p, j in data["jobs"].items() if j not in made)))
        looks += [made[j] for j in data["jobs"].values() if j in made]
        by_preset = {look_.preset: look_ for look_ in looks}
        if seen is not None:
            seen += looks
        moves = observe(data, plan, by_preset) if driving else []
        if driving and not data["cancelled"]:
            moves += await _hand_out(data, plan, by_preset)
            moves += await _tidy(data, plan, by_preset)
        status = status_of(name, data, plan, by_preset, tuple(moves))
        data["last"] = {**status.to_json(), "moves": []}  # what `status` shows of an ended group without asking
        if ask_host_keys and (unknown := next((lk.unknown_host for lk in looks if lk.unknown_host), None)):
            raise unknown
        return status
    finally:
        if driving:  # also after a failure half-way: what was handed out or taken by then is recorded
            data["plan"] = plan.to_json()
            registry.put_group(name, data)


async def _hand_out(data: dict, plan: Group, looks: dict[str, Look]) -> list[str]:
    """Every due cluster gets chunks: taken from another that has not started them, else from the pool."""
    now, notes = time.time(), []
    started = {p: set(latest_markers(look_)) for p, look_ in looks.items()}
    running = {p: [m for m in look_.markers if m.get("state") == "running"] for p, look_ in looks.items()}
    reachable = [m.preset for m in plan.members if m.preset not in looks or looks[m.preset].status is not None]
    resting = data.setdefault("resting", {})  # members that could not be reached to take frames (rest_record)
    for preset in sorted(reachable, key=plan.throughput, reverse=True):
        if preset in resting and resting[preset]["until"] > now:  # a dead cluster: a time-out every look
            continue
        member = plan.member(preset)
        held = [c for c in member.handed if c not in member.done]
        if not plan.due(preset, held, ahead_s=POLL_S):  # the next look may be that far off
            continue
        waiting = {m.preset: [c for c in m.handed if c not in m.done and c not in started.get(m.preset, set())]
                   for m in plan.members if m.preset in reachable}
        busy = {p: max((plan.pace(p).frame_s * len(m["frames"]) - (now - began(m)) for m in ms), default=0.0)
                for p, ms in running.items()}
        queued = {p: now - min((data["given_at"].get(str(c[0]), now) for c in cs), default=now)
                  for p, cs in waiting.items()}
        victim, chunks = plan.next_batch(preset, waiting, busy, queued)
        if victim is not None:
            placed = {str(c[0]): where for c in chunks if (where := data.get("placed", {}).get(str(c[0])))
                      and where["preset"] == victim and tuple(where["chunk"]) == c}
            taken = await _take_away(job_context(data["jobs"][victim]), chunks, placed)
            if kept := [c for c in chunks if c not in taken]:  # its tasks claimed them first: they stay
                plan.member(preset).handed = [c for c in plan.member(preset).handed if c not in kept]
                plan.member(victim).handed.extend(kept)
                plan.moved = [c for c in plan.moved if c not in kept]
            chunks = taken
            if taken:
                set_frames(data["jobs"][victim], plan, victim)
        if not chunks:
            continue
        if registry.group_cancelled(plan.name):  # cancelled while this look ran: nothing more goes out
            _give_back(plan, preset, chunks)
            break
        try:
            await _give(data, plan, preset, chunks)
            resting.pop(preset, None)
            if registry.group_cancelled(plan.name):  # cancelled while it was being submitted: undone
                await service.cancel(job_context(data["jobs"][preset]))
        except BraasError as exc:
            _give_back(plan, preset, chunks)
            # Not reached, with no look this time to say it answers (a look that did: a passing failure)
            rest = isinstance(exc, ConnectionFailed) and preset not in looks
            if rest:
                resting[preset] = rest_record(exc)
            notes.append(f"{preset} could not take frames {format_frames(f for c in chunks for f in c)}: {exc}"
                         + (f" (tried again in {REST_S / 60:g} min)" if rest else ""))
            continue
        source = f" from {victim}" if victim else ""
        notes.append(f"{preset} got frames {format_frames(f for c in chunks for f in c)}{source}")
    return notes


async def _tidy(data: dict, plan: Group, looks: dict[str, Look]) -> list[str]:
    """Once every frame of the film is done: members whose jobs still queue or run hold only a finish step
    whose summary the group's own replaces (and tasks whose chunks moved, where they could not be cancelled
    one by one); they are cancelled, and recorded as completed (their frames are all there)."""
    if not plan.complete:
        return []
    notes = []
    for preset, look_ in looks.items():
        if look_.status is None or look_.status.state in TERMINAL:
            continue
        job = job_context(data["jobs"][preset])
        ids = await service.cancel(job)
        registry.set_state(job.name, COMPLETED)
        notes.append(f"{preset}: every frame of the film is done; what its queue still held was cancelled "
                     f"({', '.join(ids)})")
    return notes


async def wait(name: str, poll_s: float = POLL_S, timeout_s: float | None = None,
               on_status: Callable[[GroupStatus], Awaitable[None]] | None = None, ask_host_keys: bool = False
               ) -> GroupStatus:
    """Drive the group until it ends (or `timeout_s`); `on_status` sees every look."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = await look(name, ask_host_keys=ask_host_keys)
        if on_status is not None:
            await on_status(status)
        if status.state in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimedOut(f"group {name} still {status.state} after {timeout_s:g} s")
        await asyncio.sleep(poll_s)


async def every_group(ask_host_keys: bool = False) -> list[dict[str, object]]:
    """Every group's status as `status (group)` documents: an ended one as last seen, the others looked
    at now (and driven)."""
    found = []
    for name in registry.list_groups():
        last = registry.get_group(name).get("last") or {}
        if last.get("state") not in TERMINAL:
            last = (await look(name, ask_host_keys=ask_host_keys)).to_json()
        found.append(last)
    return found


async def summary(name: str) -> dict[str, object]:
    """What the film took, from every cluster's task markers (one call per cluster): frames each cluster
    rendered, its pace, its tasks' core-hours (threads x seconds, start-up included), and the film's wall
    time from the first submission to the last frame. A member's own summary.json (its finish step) knows
    only its first batch."""
    data = registry.get_group(name)
    looks = await asyncio.gather(*(_markers_at(p, j) for p, j in data["jobs"].items()))
    clusters, ends = [], []
    for look_ in looks:
        ran = [m for m in look_.markers if m.get("state") in ("done", "failed") and m.get("finished")]
        rendered = sorted(f for m in ran for f in m.get("rendered", []))
        core_s = sum((m["finished"] - began(m)) * int(m.get("threads") or 1) for m in ran)
        ends += [m["finished"] for m in ran]
        pace = pace_of(look_.markers, data["given_at"], time.time())
        clusters.append({"preset": look_.preset, "job": data["jobs"][look_.preset], "frames": format_frames(rendered),
                         "frames_rendered": len(rendered), "tasks": len(ran),
                         "seconds_per_frame": round(pace.frame_s, 3), "core_hours": round(core_s / 3600, 6),
                         "error": look_.error})
    first = min(data["given_at"].values(), default=0.0)
    return {"job": name, "frames": format_frames(_film_frames(data)), "clusters": clusters,
            "wall_seconds": round(max(ends) - first, 3) if ends else 0.0,
            "core_hours": round(sum(c["core_hours"] for c in clusters), 6)}


async def download(name: str, dest: Path, progress: Progress | None = None) -> list[transfer.DownloadResult]:
    """Every member's new frames into `dest` (a frame is in one member's output only), and the film's
    summary.json beside them, written whole (a reader never sees half of it)."""
    got = [await transfer.download(job, dest, progress) for job in members(name)]
    text = json.dumps(await summary(name), indent=1) + "\n"
    temp = dest / ".summary.json.part"
    await asyncio.to_thread(temp.write_text, text, encoding="utf-8")
    await asyncio.to_thread(os.replace, temp, dest / "summary.json")
    return got


def member_jobs(name: str) -> list[str]:
    """The group's member jobs (a cluster that never got frames has none)."""
    return list(registry.get_group(name)["jobs"].values())


def members(name: str) -> list[JobContext]:
    return [context_of(registry.get_job(job)) for job in member_jobs(name)]


def film_frames(name: str) -> tuple[int, ...]:
    """Every frame of the group's film, wherever it is (handed out, in the pool, given up)."""
    return _film_frames(registry.get_group(name))


def _film_frames(data: dict) -> tuple[int, ...]:
    plan = Group.from_json(data["plan"])
    chunks = [*plan.pool, *(c for m in plan.members for c in m.handed), *(tuple(c) for c in data["given_up"])]
    return tuple(sorted({f for c in chunks for f in c}))


async def cancel(name: str) -> tuple[str, ...]:
    """Cancel every member; nothing more is handed out."""
    registry.cancel_group(name)  # a look driving it now hands out nothing more (and cannot undo this)
    ids: list[str] = []
    for job in members(name):
        ids += await service.cancel(job)
    return tuple(ids)


__all__ = ["FAILED", "GroupStatus", "Look", "MemberStatus", "cancel", "download", "every_group", "film_frames",
           "is_group", "look", "member_jobs", "member_name", "members", "submit", "summary", "wait"]
