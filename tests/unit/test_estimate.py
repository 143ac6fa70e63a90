"""Estimates: the wall time at a job's parallelism, the site's billing units, the rate a finished job's
summary gives, the calibration's fit, and the finish step putting the estimate beside the actual."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from braas_hpc.core import costs
from braas_hpc.core.allocation import Allocation, Balance
from braas_hpc.core.calibration import Calibration
from braas_hpc.core.estimate import Rate, _scale, estimate, makespan, rate_from_summary
from braas_hpc.core.jobs import JobSpec
from braas_hpc.core.presets import load_preset, preset_from_dict
from cluster_scripts import finish_task


def _spec(frames: int, chunk: int, **values: object) -> JobSpec:
    tasks = tuple(tuple(range(i, min(i + chunk, frames + 1))) for i in range(1, frames + 1, chunk))
    return JobSpec(name="j", preset="karolina", scene="/s.blend", frames=tuple(range(1, frames + 1)), tasks=tasks,
                   **values)  # type: ignore[arg-type]


def test_makespan_takes_tasks_in_order_by_free_slot() -> None:
    assert makespan([10, 10, 10, 10], 4) == 10
    assert makespan([10, 10, 10, 10], 2) == 20
    assert makespan([10, 10, 10, 10], 3) == 20
    assert makespan([30, 10, 10, 10], 2) == 30
    assert makespan([], 3) == 0
    assert makespan([10, 10, 10, 10], 2, gap=5) == 25  # a gap between the tasks of a slot, not before the first
    assert makespan([10], 4, gap=5) == 10


def test_wall_time_and_core_hours_from_the_rate() -> None:
    preset = load_preset("lumi")
    spec = _spec(10, 2, partition="small", cpus=32, max_parallel=2)
    found = estimate(spec, preset, Rate(frame_seconds=60, task_seconds=30, source="history", detail="d"))
    # 5 tasks of 30 + 2 x 60 s, two at a time: 3 rounds.
    assert found.tasks == 5 and found.parallel == 2 and found.wall_seconds == 3 * 150
    assert found.core_hours == pytest.approx(5 * 150 * 32 / 3600)
    assert (found.billing, found.billing_confirmed) == ("core-hours", True)
    assert found.units == pytest.approx(found.core_hours)


def test_karolina_bills_node_hours_a_gpu_an_eighth_of_a_node() -> None:
    preset = load_preset("karolina")
    gpu = _spec(8, 1, partition="qgpu", gpus=1, cpus=16, device="GPU")
    found = estimate(gpu, preset, Rate(frame_seconds=450, task_seconds=0, source="history", detail="d"))
    assert found.gpu_hours == pytest.approx(1.0) and found.node_hours == pytest.approx(1 / 8)
    assert (found.billing, found.units) == ("node-hours", pytest.approx(1 / 8))
    cpu = _spec(4, 1, partition="qcpu", whole_node=True)
    whole = estimate(cpu, preset, Rate(frame_seconds=900, task_seconds=0, source="history", detail="d", threads=1))
    assert whole.node_hours == pytest.approx(1.0) and whole.cores_per_task == 128
    assert whole.core_hours == pytest.approx(128.0)


def test_lumi_gpu_hours_are_half_a_gcd_hour() -> None:
    found = estimate(_spec(4, 1, partition="small-g", gpus=1, cpus=7, device="GPU"), load_preset("lumi"),
                     Rate(frame_seconds=900, task_seconds=0, source="history", detail="d"))
    assert found.gpu_hours == pytest.approx(1.0) and found.units == pytest.approx(0.5)


def test_a_preset_that_does_not_say_how_it_bills_shows_core_hours_unconfirmed() -> None:
    preset = preset_from_dict({"name": "site", "scheduler": "slurm", "host": "h.example.org"}, "site.toml")
    found = estimate(_spec(2, 1, cpus=4), preset, Rate(frame_seconds=1800, task_seconds=0, source="history",
                                                       detail="d"))
    assert (found.billing, found.billing_confirmed, found.units) == ("core-hours", False, pytest.approx(4.0))
    assert "does not say how the site bills" in found.line()


def test_rate_from_a_summary_splits_frames_from_start_up() -> None:
    summary = {"timings": {"1": 10.0, "2": 14.0, "3": 12.0}, "tasks": 3, "task_seconds": 3 * 5 + 36.0, "threads": 8}
    assert rate_from_summary(summary, 0) == (12.0, 5.0, 8, 0.0)  # all at once: no gap to be seen
    assert rate_from_summary({**summary, "task_seconds": None}, 0) == (12.0, 0.0, 8, 0.0)  # an older summary
    assert rate_from_summary({"timings": {}, "tasks": 1}, 0) is None
    # One at a time: 3 tasks of 17 s in a 61 s wall time leave 5 s between tasks.
    assert rate_from_summary({**summary, "wall_seconds": 61.0}, 1) == (12.0, 5.0, 8, 5.0)
    # Two at a time: 4 tasks of 12 s in two waves, 29 s in all: 5 s between the waves.
    pairs = {"timings": {str(f): 10.0 for f in range(1, 5)}, "tasks": 4, "task_seconds": 48.0, "wall_seconds": 29.0}
    assert rate_from_summary(pairs, 2) == (10.0, 2.0, 0, 5.0)


def test_previous_job_scaled_by_samples_and_pixels_only_when_comparable() -> None:
    old = _spec(1, 1, samples=64, resolution_percentage=50)
    assert _scale(old, _spec(1, 1, samples=128, resolution_percentage=100), 100) == 8.0
    assert _scale(_spec(1, 1), _spec(1, 1, resolution_percentage=50), 100) == 0.25
    assert _scale(old, _spec(1, 1), 100) is None  # the scene's own samples are not known here


def test_calibration_fit_separates_the_fixed_part() -> None:
    calibration = Calibration(percentage=25, samples=(4, 16), seconds=(1.2, 2.4), scene_resolution=(1920, 1080),
                              scene_percentage=100, scene_samples=128, threads=2, startup_seconds=3.0)
    a, b = calibration.fit()
    pixels = 1920 * 1080 / 16
    assert b == pytest.approx(1.2 / (12 * pixels)) and a == pytest.approx(0.8)
    # Full resolution, 128 samples: 16x the pixels, 8x the samples of the larger render.
    assert calibration.frame_seconds(128, 100) == pytest.approx(0.8 + (2.4 - 0.8) * 8 * 16)
    assert calibration.ratio_seconds(128, 100) == pytest.approx(2.4 * 8 * 16)


def test_over_balance_warns_only_in_the_same_unit() -> None:
    found = estimate(_spec(8, 1, partition="qgpu", gpus=1, device="GPU"), load_preset("karolina"),
                     Rate(frame_seconds=3600, task_seconds=0, source="history", detail="d"))
    assert found.units == pytest.approx(1.0)

    def balance(left: float, unit: str = "node-hours") -> Allocation:
        b = Balance("OPEN-1", "Karolina GPU", unit, left)
        return Allocation("karolina", "OPEN-1", ("it4ifree",), (b,), b)

    assert "more than what OPEN-1 has left (0.5 node-hours" in costs.over_balance(found, balance(0.5))
    assert costs.over_balance(found, balance(1.5)) == ""
    assert costs.over_balance(found, balance(0.5, "core-hours (normalized)")) == ""


def test_finish_step_puts_the_estimate_beside_the_actual(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "status").mkdir(parents=True)
    (job / "out").mkdir()
    (job / "frames.txt").write_text("1\n")
    (job / "out" / "frame_000001.png").write_bytes(b"png")
    (job / "status" / "task-1.json").write_text(json.dumps(
        {"started": 100.0, "finished": 130.0, "threads": 2, "gpus": 0, "exit_code": 0, "timings": {"1": 20.0}}))
    expected = {"wall_seconds": 20.0, "core_hours": 0.02, "gpu_hours": 0.0, "frame_seconds": 25.0}
    (job / "job.json").write_text(json.dumps({"spec": {}, "estimate": expected}))
    summary = finish_task.with_estimate(str(job), finish_task.summarize(str(job), "png",
                                                                          finish_task.read_markers(str(job))))
    assert summary["task_seconds"] == 30.0 and summary["threads"] == 2
    assert summary["estimate"] == expected
    assert summary["actual_vs_estimate"] == {"wall_seconds": 1.5, "core_hours": round(60 / 3600 / 0.02, 3),
                                             "frame_seconds": 0.8}
    (job / "job.json").write_text(json.dumps({"spec": {}}))  # submitted without an estimate
    plain = finish_task.summarize(str(job), "png", finish_task.read_markers(str(job)))
    assert finish_task.with_estimate(str(job), plain) == plain


def test_a_remembered_rate_is_for_the_scene_and_settings_for_a_day(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))
    scene = tmp_path / "s.blend"
    scene.write_bytes(b"BLENDER")
    spec = dataclasses.replace(_spec(1, 1), scene=str(scene))
    rate = Rate(frame_seconds=2.0, task_seconds=1.0, source="calibration", detail="d", threads=2)
    costs.remember_rate(spec, rate)
    assert costs.remembered_rate(spec) == rate
    assert costs.remembered_rate(dataclasses.replace(spec, samples=8)) is None
    assert costs.remembered_rate(dataclasses.replace(spec, scene=str(tmp_path / "other.blend"))) is None
    assert costs.remembered_rate(spec, now=time.time() + costs.REMEMBERED_S + 1) is None
