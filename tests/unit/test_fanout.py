"""How one animation is spread over several clusters (core/fanout.py), by simulation: clusters with their
own speed, queue wait and parallel slots take batches from the group, the group hands out and steals as
each one runs dry. Every frame must be rendered exactly once, the faster cluster must render more, and
the whole must end sooner than on the best cluster alone."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from braas_hpc.core.errors import UsageError
from braas_hpc.core.fanout import Group, Pace


@dataclass
class Cluster:
    name: str
    frame_s: float  # seconds to render one frame
    queue_s: float  # seconds from a submission until its tasks may start
    slots: int  # tasks at once
    waiting: list[tuple[tuple[int, ...], float]] = field(default_factory=list)  # (chunk, may start at), in order
    running: dict[tuple[int, ...], float] = field(default_factory=dict)  # chunk -> when it ends
    rendered: list[int] = field(default_factory=list)
    done: list[tuple[int, ...]] = field(default_factory=list)
    submissions: int = 0
    seen: Pace = field(default_factory=Pace)  # what the client measured of it

    def start(self, now: float, push: Callable[[float, str, tuple[int, ...]], None]) -> None:
        while len(self.running) < self.slots and self.waiting and self.waiting[0][1] <= now:
            chunk, ready = self.waiting.pop(0)
            self.running[chunk] = now + len(chunk) * self.frame_s
            push(self.running[chunk], self.name, chunk)
            self.seen.queue_s = now - (ready - self.queue_s) if self.seen.queue_s == 0 else self.seen.queue_s
            self.seen.slots = max(self.seen.slots, len(self.running))

    def give(self, chunks: list[tuple[int, ...]], now: float, push: Callable[..., None]) -> None:
        if chunks:
            self.submissions += 1
            self.waiting += [(chunk, now + self.queue_s) for chunk in chunks]
            push(now + self.queue_s, self.name, ())  # its tasks may start then

    def end(self, chunk: tuple[int, ...]) -> None:
        del self.running[chunk]
        self.rendered.extend(chunk)
        self.done.append(chunk)
        self.seen.frame_s = self.frame_s  # a task's markers give its seconds per frame


def _coordinate(group: Group, clusters: list[Cluster], now: float, push: Callable[..., None], steal: bool) -> None:
    """The client's part at one moment: every due cluster gets chunks (taken from another, or new)."""
    by_name = {c.name: c for c in clusters}
    for cluster in clusters:
        held = [c for c, _ in cluster.waiting] + list(cluster.running)
        if not group.due(cluster.name, held):
            continue
        if not steal:
            cluster.give(group.hand_out(cluster.name), now, push)
            continue
        waiting = {c.name: [ch for ch, _ in c.waiting] for c in clusters}
        busy = {c.name: max((end - now for end in c.running.values()), default=0.0) for c in clusters}
        queued = {c.name: now - (c.waiting[0][1] - c.queue_s) if c.waiting else 0.0 for c in clusters}
        victim, batch = group.next_batch(cluster.name, waiting, busy, queued)
        if victim is not None:
            by_name[victim].waiting = [w for w in by_name[victim].waiting if w[0] not in batch]
        cluster.give(batch, now, push)


def simulate(clusters: list[Cluster], frames: int, chunk: int, steal: bool = True,
             estimates: dict[str, Pace] | None = None) -> tuple[float, Group]:
    """Run the group to its end, the coordinator acting at every event; returns when the last frame
    ended, and the group."""
    group = Group.plan("film", range(1, frames + 1), chunk, [c.name for c in clusters], estimates)
    by_name = {c.name: c for c in clusters}
    events: list[tuple[float, int, str, tuple[int, ...]]] = []  # (time, order, cluster, chunk ended or ())
    counter = iter(range(10**9))

    def push(at: float, name: str, ended: tuple[int, ...] = ()) -> None:
        heapq.heappush(events, (at, next(counter), name, ended))

    for name, batch in group.initial().items():
        by_name[name].give(batch, 0.0, push)
    last_end = 0.0
    for _ in range(100_000):  # a plan that hands chunks back and forth never ends: fail, do not hang
        if not events:
            break
        now, _, name, ended = heapq.heappop(events)
        if ended:
            last_end = now
            by_name[name].end(ended)
            group.observe(name, by_name[name].done, by_name[name].seen)
        by_name[name].start(now, push)
        _coordinate(group, clusters, now, push, steal)
    assert not events, "the simulation did not end: chunks handed back and forth?"
    return last_end, group


def alone(cluster: Cluster, frames: int, chunk: int) -> float:
    """The same film on one cluster: one submission of every chunk."""
    tasks = -(-frames // chunk)
    waves = -(-tasks // cluster.slots)
    return cluster.queue_s + waves * chunk * cluster.frame_s


def _clusters() -> list[Cluster]:
    return [Cluster("fast", frame_s=10, queue_s=60, slots=8), Cluster("slow", frame_s=30, queue_s=30, slots=8),
            Cluster("local", frame_s=40, queue_s=0, slots=1)]


def _check(clusters: list[Cluster], frames: int, chunk: int, end: float, group: Group) -> None:
    rendered = sorted(f for c in clusters for f in c.rendered)
    assert rendered == list(range(1, frames + 1))  # each frame exactly once
    assert group.complete
    best_alone = min(alone(c, frames, chunk) for c in clusters)
    # Never much worse than the best cluster alone (an estimate 30 % off may send a chunk the wrong way).
    assert end <= best_alone * 1.1, (end, best_alone, [len(c.rendered) for c in clusters])
    # Gentle on the schedulers: a handful of submissions each, not one per chunk.
    assert all(c.submissions <= 10 for c in clusters), [c.submissions for c in clusters]


ESTIMATES = [{"fast": Pace(13, 8, 45), "slow": Pace(22, 8, 40), "local": Pace(50, 1, 0)},  # off by up to 30 %
             {"fast": Pace(7, 8, 80), "slow": Pace(39, 8, 20), "local": Pace(30, 1, 0)}]


@pytest.mark.parametrize("estimates", ESTIMATES, ids=["high", "low"])
@pytest.mark.parametrize("frames,chunk", [(250, 5), (100, 1), (48, 4), (7, 3)])
def test_with_estimates_every_frame_once_the_faster_renders_more_and_the_whole_ends_sooner(
        frames: int, chunk: int, estimates: dict[str, Pace]) -> None:
    """Each cluster's pace estimated before the start (the scene's previous jobs, or a calibration),
    wrong by up to 30 %: every frame once, never much later than the best cluster alone, and a long
    film sooner."""
    clusters = _clusters()
    end, group = simulate(clusters, frames, chunk, estimates=estimates)
    _check(clusters, frames, chunk, end, group)
    fast, slow, local = clusters
    if frames >= 48:
        assert len(fast.rendered) > len(slow.rendered) >= len(local.rendered), [len(c.rendered) for c in clusters]
    if frames >= 100:  # a film long enough for the others to help: at least 5 % sooner
        assert end < 0.95 * min(alone(c, frames, chunk) for c in clusters), end


def test_without_estimates_a_long_film_still_ends_sooner() -> None:
    """Nothing known at the start: the first batches measure each cluster, the slow ones' waiting
    chunks move to the fast one. A short film cannot win this way (a slow cluster's first chunk alone
    outlasts the fast cluster's whole run): estimates are what makes those work."""
    clusters = _clusters()
    end, group = simulate(clusters, 250, 5)
    _check(clusters, 250, 5, end, group)
    assert end < min(alone(c, 250, 5) for c in clusters)
    assert len(clusters[0].rendered) > len(clusters[1].rendered) > len(clusters[2].rendered)


def test_a_cluster_stuck_in_its_queue_has_its_waiting_chunks_taken() -> None:
    """One cluster's queue holds its first batch for an hour: the others take those chunks (it never
    starts them), and the film ends long before that hour."""
    stuck = Cluster("stuck", frame_s=5, queue_s=3600, slots=16)
    clusters = [stuck, Cluster("a", frame_s=20, queue_s=10, slots=4), Cluster("b", frame_s=20, queue_s=10, slots=4)]
    end, _ = simulate(clusters, 120, 2)
    assert sorted(f for c in clusters for f in c.rendered) == list(range(1, 121))
    assert end < 3600 and stuck.rendered == []

    without, _ = simulate([Cluster("stuck", 5, 3600, 16), Cluster("a", 20, 10, 4), Cluster("b", 20, 10, 4)],
                          120, 2, steal=False)
    assert without > 3600  # what stealing saved


def test_a_group_survives_its_record() -> None:
    group = Group.plan("film", range(1, 11), 2, ["x", "y"], {"x": Pace(frame_s=4.0)})
    group.initial()
    group.observe("x", group.member("x").handed[:1], Pace(slots=3, queue_s=20.0))
    again = Group.from_json(group.to_json())
    assert again.to_json() == group.to_json()
    assert again.pace("x") == Pace(4.0, 3, 20.0) and again.pace("y") == Pace(4.0, 3, 20.0)  # y: x's, the mean


def test_bad_groups_are_refused() -> None:
    with pytest.raises(UsageError, match="at least two different presets"):
        Group.plan("film", range(1, 5), 1, ["x", "x"])
    with pytest.raises(UsageError, match="chunk size"):
        Group.plan("film", range(1, 5), 0, ["x", "y"])


def test_a_cluster_whose_first_batch_has_not_started_gets_nothing_more() -> None:
    """Its queue holds it: more chunks would wait there too, while others may take what it holds."""
    group = Group.plan("film", range(1, 41), 1, ["queued", "other"])
    group.initial()
    group.member("queued").handed = []  # the other took all it held
    assert not group.due("queued", [])
    group.observe("queued", [], Pace(frame_s=5.0, slots=1))  # its first task ran: it is known now
    assert group.due("queued", [])


def test_a_chunk_moved_once_is_never_moved_again() -> None:
    """Taken from one cluster, a chunk stays where it went: chunks handed back and forth never end."""
    paces = {"slow": Pace(100, 1, 0), "mid": Pace(50, 1, 0), "fast": Pace(1, 8, 0)}
    group = Group.plan("film", range(1, 5), 1, list(paces), paces)
    group.pool = []
    group.member("mid").handed = [(1,), (2,)]
    group.moved = [(2,)]  # (2,) came to mid from slow
    assert group.steal("fast", {"mid": [(1,), (2,)]}, {"mid": 0.0}) is None  # its back chunk moved once: no more
    group.moved = []
    assert group.steal("fast", {"mid": [(1,), (2,)]}, {"mid": 0.0}) == ("mid", [(2,), (1,)])
