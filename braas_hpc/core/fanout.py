"""One animation over several clusters: which frames each cluster gets, and when.

Frames go out in chunks (a chunk is one array task), not all at once: a cluster whose speed is not known
yet, or whose queue is long, would hold frames another finishes sooner. The group keeps a pool and each
cluster gets batches from it. What the group knows of a cluster, from what it measured (else from an
estimate, else the group's mean): seconds per frame of one task, how many tasks it runs at once, and how
long a batch waits in its queue before its first task starts.

- A cluster is due a batch when what it holds would run dry within its queue wait (so the next batch
  queues while the last one still renders: a queue wait is paid once per batch, not between batches).
- A batch, once every cluster's pace is known (measured, or estimated from the scene's earlier jobs):
  the chunks it would render if the whole pool went out now, each chunk where it would end soonest
  (list scheduling): one submission per cluster when the estimates hold, few when they do not. Before
  that: its share of the pool by throughput, halved (guided self-scheduling: the rest goes out once the
  first batches measured each cluster), and at least as many chunks as it runs at once.
- The pool first: a due cluster takes chunks from another only when the pool is empty.
- A due cluster first takes chunks another cluster holds but has not started, when it would finish them
  sooner than that cluster could get to them (work stealing): a slow cluster handed a large batch before
  anything was measured does not hold the film's end. On the cluster a task claims its chunk before
  rendering it, and taking a chunk is claiming it first, so no frame is rendered twice (the claims are the
  cluster scripts' part; this module only decides).

The plan is plain data (`Group.to_json`), kept with the job list; the decisions are functions of it and
of what the clusters report, tested by simulation (tests/unit/test_fanout.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from .errors import UsageError

GUIDE = 2  # before paces are known, a batch is a cluster's share of the pool divided by this
STEAL_MARGIN = 0.8  # a chunk moves only when it ends this much sooner where it goes (no churn on noise)


@dataclass
class Pace:
    """How a cluster renders this film, measured or estimated (0: not known)."""

    frame_s: float = 0.0  # seconds per frame in one task
    slots: int = 0  # tasks it runs at once
    queue_s: float = 0.0  # from a batch's submission to its first task's start


@dataclass
class Member:
    preset: str
    pace: Pace = field(default_factory=Pace)
    handed: list[tuple[int, ...]] = field(default_factory=list)  # chunks it holds or held, in order
    done: list[tuple[int, ...]] = field(default_factory=list)
    batches: int = 0  # hand-outs it got

    def to_json(self) -> dict[str, object]:
        return {"preset": self.preset, "pace": asdict(self.pace), "handed": [list(c) for c in self.handed],
                "done": [list(c) for c in self.done], "batches": self.batches}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Member:
        pace = data.get("pace") or {}
        return cls(str(data["preset"]), Pace(**pace),  # type: ignore[arg-type]
                   [tuple(c) for c in data.get("handed", [])],  # type: ignore[union-attr]
                   [tuple(c) for c in data.get("done", [])],  # type: ignore[union-attr]
                   int(data.get("batches", 0)))  # type: ignore[call-overload]


@dataclass
class Group:
    name: str
    members: list[Member]
    pool: list[tuple[int, ...]]
    moved: list[tuple[int, ...]] = field(default_factory=list)  # taken once from a cluster: never again

    @classmethod
    def plan(cls, name: str, frames: Sequence[int], chunk: int, presets: Sequence[str],
             estimates: Mapping[str, Pace] | None = None) -> Group:
        if len(set(presets)) != len(presets) or len(presets) < 2:
            raise UsageError("a job over several clusters names at least two different presets "
                             f"(got {', '.join(presets) or 'none'})")
        if chunk < 1:
            raise UsageError(f"chunk size must be at least 1, got {chunk}")
        ordered = sorted(set(frames))
        chunks = [tuple(ordered[i:i + chunk]) for i in range(0, len(ordered), chunk)]
        known = estimates or {}
        return cls(name, [Member(p, known.get(p, Pace())) for p in presets], chunks)

    def member(self, preset: str) -> Member:
        return next(m for m in self.members if m.preset == preset)

    # ---- what is known of a cluster, filled in from the others where it is not -------------------------

    def _mean(self, attribute: str, fallback: float) -> float:
        known = [getattr(m.pace, attribute) for m in self.members if getattr(m.pace, attribute) > 0]
        return sum(known) / len(known) if known else fallback

    def pace(self, preset: str) -> Pace:
        own = self.member(preset).pace
        return Pace(own.frame_s or self._mean("frame_s", 1.0), own.slots or max(1, round(self._mean("slots", 1))),
                    own.queue_s if own.queue_s > 0 else self._mean("queue_s", 0.0))

    def throughput(self, preset: str) -> float:
        pace = self.pace(preset)
        return pace.slots / pace.frame_s  # frames per second with every slot busy

    def _drain_s(self, preset: str, lengths: Sequence[int]) -> float:
        """Seconds to render chunks of these lengths (frames each) once started."""
        pace = self.pace(preset)
        if not lengths:
            return 0.0
        waves = math.ceil(len(lengths) / pace.slots)
        return waves * max(lengths) * pace.frame_s

    # ---- decisions ----------------------------------------------------------------------------------

    def due(self, preset: str, held: Sequence[tuple[int, ...]], ahead_s: float = 0.0) -> bool:
        """Whether the cluster should get more now: what it holds (`held`: handed, not finished) would
        run dry within its queue wait, plus `ahead_s` (the time to the next decision: a client that looks
        every few seconds hands out that much sooner). A cluster that was given a batch and has not
        rendered a frame yet (its queue holds it) gets nothing more until it does: others may take what it holds."""
        member = self.member(preset)
        if member.batches and not member.pace.frame_s:
            return False
        pace = self.pace(preset)
        return self._drain_s(preset, [len(c) for c in held]) <= pace.queue_s + ahead_s

    def batch_size(self, preset: str) -> int:
        """Chunks off the pool for a due cluster. With every cluster's pace known (measured or
        estimated): half of what it would render if the whole pool went out now, each chunk where it
        would end soonest (the other half waits for what the next batches measure). Before that: its
        share by throughput, halved (guided)."""
        if not self.pool:
            return 0
        if not all(m.pace.frame_s for m in self.members):  # guesses: each its share, halved (guided)
            total = sum(self.throughput(m.preset) for m in self.members)
            share = self.throughput(preset) / total
            return min(len(self.pool), max(self.pace(preset).slots, math.ceil(len(self.pool) * share / GUIDE)))
        return self._assignment()[preset]

    def _assignment(self) -> dict[str, int]:
        """How many of the pool's chunks each cluster would render if each chunk, in the pool's order, went
        where it would end soonest after what that cluster holds and was assigned before it (list
        scheduling; a new batch waits its cluster's queue)."""
        held = {m.preset: [len(c) for c in m.handed if c not in set(m.done)] for m in self.members}
        count = {m.preset: 0 for m in self.members}
        longest = {p: max(lengths, default=0) for p, lengths in held.items()}
        tasks = {p: len(lengths) for p, lengths in held.items()}
        paces = {m.preset: self.pace(m.preset) for m in self.members}

        def end(preset: str, chunk: int) -> float:
            pace = paces[preset]
            waves = math.ceil((tasks[preset] + 1) / pace.slots)
            return pace.queue_s + waves * max(longest[preset], chunk) * pace.frame_s

        for chunk in self.pool:
            best = min(paces, key=lambda p: (end(p, len(chunk)), -paces[p].slots / paces[p].frame_s))
            count[best] += 1
            tasks[best] += 1
            longest[best] = max(longest[best], len(chunk))
        return count

    def _end_with(self, preset: str, held: list[int], chunk: int) -> float:
        """When `preset` would end `chunk` if it got it after what it holds (a new batch waits its queue)."""
        pace = self.pace(preset)
        return pace.queue_s + self._drain_s(preset, [*held, chunk])

    def hand_out(self, preset: str) -> list[tuple[int, ...]]:
        """The next batch from the pool for `preset`'s cluster (taken off the pool)."""
        size = self.batch_size(preset)
        batch, self.pool = self.pool[:size], self.pool[size:]
        member = self.member(preset)
        member.handed.extend(batch)
        member.batches += bool(batch)
        return batch

    def initial(self) -> dict[str, list[tuple[int, ...]]]:
        """The first batch of every cluster, handed out in turn (so none gets the whole pool)."""
        return {m.preset: self.hand_out(m.preset) for m in self.members}

    def steal(self, thief: str, waiting: Mapping[str, Sequence[tuple[int, ...]]], busy_s: Mapping[str, float],
              queued_s: Mapping[str, float] | None = None) -> tuple[str, list[tuple[int, ...]]] | None:
        """Chunks `thief` should take: from the cluster whose waiting (not started) chunks it would finish
        sooner than that cluster would reach them. `waiting`: per cluster, its chunks not started, in the
        order it starts them; `busy_s`: per cluster, seconds until its running tasks free their slots;
        `queued_s`: per cluster, how long its oldest waiting chunk has waited (a cluster that started
        nothing yet is known only by that: its chunks go when they waited longer than the thief needs).
        Returns (victim, chunks taken from the back of its queue), or None."""
        if not self.member(thief).pace.frame_s:
            return None  # nothing known of its speed: no reason to prefer it
        best: tuple[str, list[tuple[int, ...]], int] | None = None
        for victim, chunks in waiting.items():
            if victim == thief or not chunks:
                continue
            taken = self._worth_taking(thief, victim, chunks, busy_s.get(victim, 0.0),
                                       (queued_s or {}).get(victim, 0.0))
            gain = sum(len(c) for c in taken)
            if taken and (best is None or gain > best[2]):
                best = (victim, taken, gain)
        if best is None:
            return None
        victim, taken, _ = best
        victim_member = self.member(victim)
        victim_member.handed = [c for c in victim_member.handed if c not in taken]
        self.member(thief).handed.extend(taken)
        self.moved.extend(taken)
        return victim, taken

    def _worth_taking(self, thief: str, victim: str, chunks: Sequence[tuple[int, ...]], busy_s: float,
                      queued_s: float) -> list[tuple[int, ...]]:
        """From the back of `victim`'s queue, the chunks `thief` would end sooner (by STEAL_MARGIN)."""
        known = self.member(victim).pace
        pace = self.pace(victim)
        still_queued = max(0.0, known.queue_s - queued_s) if known.queue_s else 0.0
        taken: list[tuple[int, ...]] = []
        for index in range(len(chunks) - 1, -1, -1):
            chunk = chunks[index]
            if chunk in self.moved:
                break
            thief_end = self.pace(thief).queue_s + self._drain_s(thief, [len(c) for c in [*taken, chunk]])
            if known.frame_s:  # the victim's speed is known: when it would end this chunk
                victim_end = still_queued + busy_s + (index // pace.slots + 1) * len(chunk) * pace.frame_s
                if thief_end >= victim_end * STEAL_MARGIN:
                    break
            elif thief_end >= queued_s:  # known only by its wait so far
                break
            taken.append(chunk)
        return taken

    def next_batch(self, thief: str, waiting: Mapping[str, Sequence[tuple[int, ...]]], busy_s: Mapping[str, float],
                   queued_s: Mapping[str, float] | None = None) -> tuple[str | None, list[tuple[int, ...]]]:
        """What a due cluster gets: a batch of the pool while it has one for it, else chunks taken from
        another (and from which). The pool first: taking a chunk costs a claim on the other cluster, and
        a cluster that takes one chunk at a time from another would get no more per decision than that."""
        batch = self.hand_out(thief) if self.pool else []
        if batch:
            return None, batch
        taken = self.steal(thief, waiting, busy_s, queued_s)
        return taken if taken is not None else (None, [])

    def observe(self, preset: str, done: Sequence[tuple[int, ...]], pace: Pace) -> None:
        """What `preset`'s cluster reported: the chunks it finished and its pace as measured (a field
        left 0 keeps what was known)."""
        member = self.member(preset)
        finished = set(done)
        member.done = [c for c in member.handed if c in finished]
        member.pace = Pace(pace.frame_s or member.pace.frame_s, pace.slots or member.pace.slots,
                           pace.queue_s if pace.queue_s > 0 else member.pace.queue_s)

    @property
    def complete(self) -> bool:
        return not self.pool and all(set(m.handed) <= set(m.done) for m in self.members)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "members": [m.to_json() for m in self.members],
                "pool": [list(c) for c in self.pool], "moved": [list(c) for c in self.moved]}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Group:
        return cls(str(data["name"]), [Member.from_json(m) for m in data["members"]],  # type: ignore[union-attr]
                   [tuple(c) for c in data["pool"]],  # type: ignore[union-attr]
                   [tuple(c) for c in data.get("moved", [])])  # type: ignore[union-attr]
