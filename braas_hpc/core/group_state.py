"""What a group's looks at its clusters mean (core.group acts on them): each chunk done, lost or still
held by its cluster, from the cluster's task markers and frames; each cluster's pace as measured; the
group's status. No remote calls here: the looks come in, the plan and the group's record change.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from . import batch, registry
from .errors import HostKeyUnknown
from .fanout import Group, Pace
from .frames import format_frames
from .monitor import JobStatus
from .schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TERMINAL

STARTED = {"running", "done", "failed"}  # marker states of a task that claimed its chunk here


@dataclass(frozen=True)
class MemberStatus:
    preset: str
    job: str  # "" until the cluster got its first batch
    state: str
    frames_done: int  # of the film's frames, rendered on this cluster
    frames_held: int  # handed to it and not rendered yet
    pace: Pace
    error: str = ""  # why its cluster did not answer this look (state UNREACHABLE)

    def to_json(self) -> dict[str, object]:
        return {"preset": self.preset, "job": self.job, "state": self.state, "frames_done": self.frames_done,
                "frames_held": self.frames_held, "seconds_per_frame": round(self.pace.frame_s, 3),
                "slots": self.pace.slots, "queue_seconds": round(self.pace.queue_s, 1), "error": self.error}


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
class Look:
    """What one member's cluster said at one look."""

    preset: str
    status: JobStatus | None = None
    frames: frozenset[int] = frozenset()  # what the member's record says it holds
    markers: list[dict[str, object]] = field(default_factory=list)
    error: str = ""
    job: str = ""  # the member job
    answers: batch.Answers = field(default_factory=batch.Answers)  # the answers of a caller's own steps (`also`)
    unknown_host: HostKeyUnknown | None = None  # why it did not answer, when that is the user's question


def set_frames(job: str, plan: Group, preset: str) -> None:
    held = sorted(plan.member(preset).handed)
    registry.set_frames(job, tuple(sorted(f for c in held for f in c)), tuple(held))


def began(marker: dict[str, object]) -> float:
    """When the task's job script started (its start-up counts), else when Blender began the task."""
    began = marker.get("began")
    return float(began) if isinstance(began, (int, float)) and not isinstance(began, bool) else marker["started"]


def pace_of(markers: list[dict[str, object]], given_at: dict[str, float], now: float) -> Pace:
    """A member's pace as its tasks' markers show it (0 where not known yet): seconds per frame of a
    whole task (module loads and Blender's start included), tasks at once, and a batch's queue wait."""
    started = [m for m in markers if m.get("state") in STARTED and m.get("frames") and m.get("started")]
    done = [m for m in started if m.get("state") == "done" and m.get("finished")]
    frame_s = statistics.fmean((m["finished"] - began(m)) / len(m["frames"]) for m in done) if done else 0.0
    spans = sorted((began(m), m.get("finished") or now) for m in started)
    # Overlapping by more than a second (a job script's start is known to the second): at once.
    slots = max((sum(1 for s, e in spans if s <= start < e - 1) for start, _ in spans), default=0)
    first_start: dict[float, float] = {}  # a batch's hand-out time -> its first task's start
    for m in started:
        at = given_at.get(str(m["frames"][0]))
        if at is not None:
            first_start[at] = min(first_start.get(at, began(m)), began(m))
    waits = [max(0.0, s - at) for at, s in first_start.items()]
    return Pace(frame_s, slots, statistics.fmean(waits) if waits else 0.0)


def latest_markers(look_: Look) -> dict[tuple[int, ...], dict[str, object]]:
    """Each chunk's newest marker on this member (a chunk given back to the same cluster has two); a
    moved chunk's marker says only that it was taken."""
    latest: dict[tuple[int, ...], dict[str, object]] = {}
    for m in look_.markers:
        if m.get("state") in STARTED and m.get("frames"):
            chunk = tuple(m["frames"])
            if chunk not in latest or m["started"] >= latest[chunk]["started"]:
                latest[chunk] = m
    return latest


def observe(data: dict, plan: Group, looks: dict[str, Look]) -> list[str]:
    """What the members did since the last look; frames they lost go back to the pool as chunks of their
    own (a chunk's rendered frames stay done where they are)."""
    now, notes = time.time(), []
    retries = int(data["request"].get("retries", 2))
    for preset, look_ in looks.items():
        if look_.status is None:
            continue
        member, missing = plan.member(preset), set(look_.status.missing)
        markers = latest_markers(look_)
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
                gone = tuple(f for f in chunk if f not in kept)
                if not gone:  # every frame there after all (the task's word and the listing agree late)
                    done.append(chunk)
                    continue
                done += [kept] if kept else []
                lost.append((chunk, kept, gone))
        if lost and not data["cancelled"]:
            member.handed = [c for c in member.handed if c not in {chunk for chunk, _, _ in lost}]
            member.handed += [kept for _, kept, _ in lost if kept]
            again = []
            for _, _, frames in lost:
                count = data["lost"][str(frames[0])] = data["lost"].get(str(frames[0]), 0) + 1
                (again if count <= retries else data["given_up"]).append(frames)
            plan.pool = sorted([*(tuple(c) for c in again), *plan.pool])
            set_frames(data["jobs"][preset], plan, preset)
            lost_frames = format_frames(f for _, _, frames in lost for f in frames)
            notes.append(f"{preset} lost frames {lost_frames}: "
                         + ("back to the group" if again else "given up (no retries left)"))
        plan.observe(preset, done, pace_of(look_.markers, data["given_at"], now))
    return notes


def status_of(name: str, data: dict, plan: Group, looks: dict[str, Look], moves: tuple[str, ...]) -> GroupStatus:
    frames_total = sum(len(c) for c in plan.pool) + sum(len(c) for m in plan.members for c in m.handed)
    given_up = [tuple(c) for c in data["given_up"]]  # frames lost more often than the retries allow
    frames_total += sum(len(c) for c in given_up)
    members, done_total, states = [], 0, []
    for m in plan.members:
        look_ = looks.get(m.preset)
        done = sum(len(c) for c in m.done)
        held = sum(len(c) for c in m.handed) - done
        state = (look_.status.state if look_ and look_.status else "UNREACHABLE" if look_ else "WAITING")
        error = look_.error if look_ else ""
        if not look_ and (rest := data.get("resting", {}).get(m.preset)):  # no job there: could not be reached
            left = rest["until"] - time.time()
            state, error = "UNREACHABLE", rest["why"] + (f" (tried again in {max(1, round(left / 60))} min)"
                                                         if left > 0 else "")
        members.append(MemberStatus(m.preset, data["jobs"].get(m.preset, ""), state, done, held, m.pace, error))
        done_total += done
        if look_ and look_.status:
            states.append(look_.status.state)
    missing = tuple(sorted(f for c in given_up for f in c))
    if data["cancelled"]:
        state = CANCELLED
    elif plan.complete:  # every frame where it belongs: what members still queue holds none (core.group tidies it)
        state = COMPLETED if not missing else FAILED
    elif any(s == RUNNING for s in states) or done_total:
        state = RUNNING
    else:
        state = PENDING
    return GroupStatus(name, state, done_total, frames_total, tuple(members), sum(len(c) for c in plan.pool),
                       missing, moves)
