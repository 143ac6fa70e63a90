"""Recovery planning from a job's task markers: chunks sized to the walltime, failing nodes avoided."""

from __future__ import annotations

import json
from pathlib import Path

from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.planning import failing_nodes, fitting_chunk, plan, seconds_per_frame
from braas_hpc.core.presets import load_preset
from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.schedulers.base import Round

NOW = 1_800_000_000.0


def spec(chunk: int = 10, walltime_min: int = 60) -> JobSpec:
    return JobSpec(name="j", preset="karolina", scene="/s.blend", frames=tuple(range(1, 101)), chunk=chunk,
                   walltime_min=walltime_min, tasks=())


def marker(node: str, state: str, started: float = NOW - 60, exit_code: int | None = None,
           timings: dict[str, float] | None = None) -> dict[str, object]:
    return {"node": node, "state": state, "started": started, "exit_code": exit_code, "timings": timings or {}}


def test_chunks_fit_the_walltime_with_a_margin() -> None:
    # 10 frames per task at 600 s each cannot fit one hour: 45 min of 60 fits 4 such frames.
    markers = [marker("n1", "done", timings={str(f): 600.0 for f in range(1, 5)})]
    assert seconds_per_frame(markers) == 600.0
    assert fitting_chunk(spec(), 600.0, timed_out=True) == 4
    assert fitting_chunk(spec(chunk=2), 60.0, timed_out=True) == 2  # never more than the user asked
    assert fitting_chunk(spec(), 7200.0, timed_out=True) == 1  # one frame per task at least
    assert fitting_chunk(spec(chunk=8), None, timed_out=True) == 4  # nothing measured: halve on a timeout
    assert fitting_chunk(spec(chunk=8), None, timed_out=False) == 8


def test_the_slow_frames_size_the_chunk_not_the_average() -> None:
    timings = {str(f): 10.0 for f in range(1, 91)} | {str(f): 300.0 for f in range(91, 101)}
    assert seconds_per_frame([marker("n1", "done", timings=timings)]) == 300.0


def test_nodes_where_tasks_died_twice_are_avoided() -> None:
    markers = [
        marker("bad1", "running", started=NOW - 120), marker("bad1", "running", started=NOW - 300),  # killed early
        marker("gpu0", "failed", exit_code=4), marker("gpu0", "failed", exit_code=4),  # no GPU there
        marker("slow", "running", started=NOW - 3500), marker("slow", "running", started=NOW - 3590),  # walltime
        marker("once", "running", started=NOW - 100),
        marker("ok", "done"),
    ]
    assert failing_nodes(markers, walltime_min=60, now=NOW) == ("bad1", "gpu0")


def test_no_node_is_avoided_when_none_is_known_to_work() -> None:
    markers = [marker("only", "running", started=NOW - 10), marker("only", "running", started=NOW - 20)]
    assert failing_nodes(markers, walltime_min=60, now=NOW) == ()


def test_node_names_from_the_cluster_are_checked() -> None:
    markers = [marker("n1;rm -rf /", "failed", exit_code=4)] * 2 + [marker("ok", "done")]
    assert failing_nodes(markers, walltime_min=60, now=NOW) == ()


def test_the_plan_and_the_slurm_exclude_directive() -> None:
    markers = [marker("bad", "failed", exit_code=4)] * 2 + [marker("ok", "done", timings={"1": 900.0})]
    chosen = plan(spec(), markers, (5, 6, 7), timed_out=False, now=NOW)
    assert chosen.frames == (5, 6, 7) and chosen.chunk == 3 and chosen.exclude_nodes == ("bad",)
    slurm = scheduler_for("slurm")
    pairs = slurm.directive_pairs(spec(), load_preset("karolina"), JobPaths("/w/braas-hpc", "j"),
                                  Round(1, 1, chosen.exclude_nodes))
    assert ("--exclude", "bad") in pairs


# ---- damaged markers: a marker is the cluster's file, any bytes may be in it -------------------------

DAMAGED = {
    "nan-timing": '{"node": "n1", "state": "done", "timings": {"1": NaN}}',
    "inf-timing": '{"node": "n1", "state": "done", "timings": {"2": Infinity}}',
    "neg-inf-started": '{"node": "n2", "state": "running", "started": -Infinity, "timings": {}}',
    "text-timing": '{"node": "n1", "state": "done", "timings": {"3": "fast"}}',
    "negative-timing": '{"node": "n1", "state": "done", "timings": {"4": -1}}',
    "list-timings": '{"node": "n1", "state": "done", "timings": [1, 2]}',
    "number-node": '{"node": 5, "state": "failed", "exit_code": 4}',
    "bool-started": '{"node": "n3", "state": "running", "started": true}',
    "frames-text": '{"node": "n1", "state": "done", "frames": "1-5"}',
    "not-an-object": "[1, 2, 3]",
}


def test_damaged_markers_are_left_out_and_the_others_still_count(tmp_path: Path) -> None:
    import asyncio

    from braas_hpc.core.recovery import read_markers
    from braas_hpc.core.transport.local import LocalTransport

    paths = JobPaths(str(tmp_path / "braas-hpc"), "j-20260101-000000-abcd")
    status = Path(paths.status_dir)
    status.mkdir(parents=True)
    for name, text in DAMAGED.items():
        (status / f"{name}.json").write_text(text)
    (status / "task-1.json").write_text(json.dumps(marker("n1", "done", timings={"5": 120.0, "6": 100.0})))
    markers = asyncio.run(read_markers(LocalTransport(), paths))
    assert markers == [marker("n1", "done", timings={"5": 120.0, "6": 100.0})]
    chosen = plan(spec(), markers, (7, 8), timed_out=True, now=NOW)  # ValueError on a NaN before
    assert chosen.seconds_per_frame == 120.0 and chosen.chunk == 10


def test_a_damaged_marker_fails_its_own_task_only() -> None:
    from braas_hpc.core.monitor import state_from_marker

    for text in DAMAGED.values():
        assert state_from_marker(text, {1}) == ("FAILED", "marker damaged"), text
    assert state_from_marker('{"state": "done", "frames": [2]}', {1}) == ("COMPLETED", "its frames are on disk")


def test_a_timing_too_small_to_divide_by_keeps_the_chunk() -> None:
    assert fitting_chunk(spec(chunk=3), 1e-320, timed_out=False) == 3  # OverflowError before
    assert fitting_chunk(spec(chunk=3), float("nan"), timed_out=False) == 3


def test_a_huge_marker_is_not_read_whole(tmp_path: Path) -> None:
    """A marker is small; one of 20 MiB (valid JSON) was read whole and used. Now it is cut on the cluster,
    so it no longer parses: damaged, the other markers still count."""
    import asyncio

    from braas_hpc.core.markers import MARKER_BYTES
    from braas_hpc.core.recovery import read_markers
    from braas_hpc.core.transport.local import LocalTransport

    class Measured(LocalTransport):
        sizes: list[int] = []

        async def run(self, argv, **kwargs):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN003, ANN201
            done = await super().run(argv, **kwargs)
            self.sizes.append(len(done.stdout))
            return done

    paths = JobPaths(str(tmp_path / "braas-hpc"), "j-20260101-000000-abcd")
    status = Path(paths.status_dir)
    status.mkdir(parents=True)
    (status / "task-1.json").write_text(json.dumps({**marker("n1", "failed"), "pad": "x" * (20 << 20)}))
    (status / "task-2.json").write_text(json.dumps(marker("n2", "done")))
    transport = Measured()
    assert asyncio.run(read_markers(transport, paths)) == [marker("n2", "done")]
    assert transport.sizes[0] < 2 * MARKER_BYTES + 1000
