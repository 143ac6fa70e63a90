"""Split stills before anything runs: the parts a request makes, what is refused, the samples read from the
.blend (saved by bpy 4.5 and 5.0), the job script's arguments, and a split job's state from its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from braas_hpc.core.errors import UsageError
from braas_hpc.core.jobs import JobSpec, missing_frames
from braas_hpc.core.monitor import split_state
from braas_hpc.core.registry import JobRecord
from braas_hpc.core.scene_settings import read_scene_settings
from braas_hpc.core.schedulers.base import COMPLETED, FAILED, RUNNING, render_job_script
from braas_hpc.core.spec import SubmitRequest, build_spec
from braas_hpc.core.split import part_file_name, part_samples
from tests.conftest import run_cli
from tests.helpers import make_sample, make_variant


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample(tmp_path_factory.mktemp("split"))


@pytest.fixture(scope="module")
def still(sample: Path) -> Path:
    return make_variant(sample, sample.with_name("still.blend"), frame_start=5, frame_end=5, samples=100)


def test_the_samples_are_shared_out_evenly_and_add_up() -> None:
    assert part_samples(100, 3) == (34, 33, 33)
    assert part_samples(64, 4) == (16, 16, 16, 16)
    assert part_samples(5, 5) == (1, 1, 1, 1, 1)
    assert all(sum(part_samples(total, n)) == total for total in (2, 7, 100, 4096) for n in range(2, total + 1, 3))


def test_the_scenes_samples_are_read_from_the_file(sample: Path, still: Path, bpy_path: str) -> None:
    version = "50" if bpy_path else "45"
    saved = make_variant(sample, sample.with_name(f"s{version}.blend"), bpy_path, samples=37)
    assert read_scene_settings(saved).samples == 37
    assert read_scene_settings(still).samples == 100


def test_a_still_becomes_parts_each_with_its_range_of_the_samples(still: Path) -> None:
    spec, _ = build_spec(SubmitRequest(scene=still, preset="local", split_samples=3))
    assert spec.frames == (1, 2, 3) and spec.tasks == ((1,), (2,), (3,)) and spec.split == 3
    assert spec.split_frame == 5 and spec.part_samples == (34, 33, 33) and spec.part_offsets == (0, 34, 67)
    assert JobSpec.from_dict(spec.to_dict()) == spec  # as job.json and the registry keep it
    # --samples is the total the parts share; --chunk does not put two parts in one task.
    spec, _ = build_spec(SubmitRequest(scene=still, preset="local", split_samples=4, samples=10, chunk=3))
    assert spec.part_samples == (3, 3, 2, 2) and spec.tasks == ((1,), (2,), (3,), (4,))
    # An ordinary job has no parts.
    plain, _ = build_spec(SubmitRequest(scene=still, preset="local"))
    assert plain.split == 0 and plain.frames == (5,) and plain.split_frame == 0


def test_what_cannot_be_split_is_refused_with_a_reason(sample: Path, still: Path) -> None:
    with pytest.raises(UsageError, match="renders one still; sample.blend gives 4 frames"):
        build_spec(SubmitRequest(scene=sample, preset="local", frames="1-4", split_samples=2))
    with pytest.raises(UsageError, match="at least 2 parts, got 1"):
        build_spec(SubmitRequest(scene=still, preset="local", split_samples=1))
    with pytest.raises(UsageError, match="101 is more parts than the 100 samples of still.blend"):
        build_spec(SubmitRequest(scene=still, preset="local", split_samples=101))
    with pytest.raises(UsageError, match="more parts than the 8 samples"):
        build_spec(SubmitRequest(scene=still, preset="local", split_samples=9, samples=8))
    with pytest.raises(UsageError, match="a split still is one frame"):
        build_spec(SubmitRequest(scene=still, preset="local", split_samples=2, video="h264"))
    # On the command line: exit status 2, nothing written.
    for args, said in ((("--split-samples", "0"), "at least 2 parts, got 0"),
                       (("--split-samples", "2", "--frames", "1-3"), "renders one still")):
        done = run_cli("submit", str(still), "--preset", "karolina", *args, "--dry-run")
        assert done.returncode == 2 and said in done.stderr, done.stderr


def test_the_job_script_gives_each_part_its_range_of_the_samples(still: Path) -> None:
    from braas_hpc.core.jobs import JobPaths
    from braas_hpc.core.presets import load_preset

    spec, preset = build_spec(SubmitRequest(scene=still, preset="local", split_samples=3))
    script = render_job_script([], spec, load_preset("local"), JobPaths("/w", spec.name), ["blender"], "/s/rt.py")
    assert "--split-frame 5 --part-samples 34,33,33 --part-offsets 0,34,67" in script
    plain, _ = build_spec(SubmitRequest(scene=still, preset="local"))
    assert "--split-frame" not in render_job_script([], plain, preset, JobPaths("/w", plain.name), ["b"], "/s/rt.py")


def _record(spec: JobSpec, state: str = RUNNING) -> JobRecord:
    return JobRecord(spec.name, "testbed", spec, "/w", ("1",), state, {}, 0, 0.0, False, {"1": spec.split})


def test_a_split_job_is_complete_only_with_its_merged_frame(still: Path) -> None:
    spec, _ = build_spec(SubmitRequest(scene=still, preset="local", split_samples=3, image_format="PNG"))
    parts = {part_file_name(5, k) for k in (1, 2, 3)}
    assert missing_frames(spec, parts - {part_file_name(5, 2)}) == [2]  # parts, not frames, are the units
    assert missing_frames(spec, parts) == []
    record = _record(spec)
    # Every task done and every part there: the finish step has still to merge.
    assert split_state(record, COMPLETED, parts, 0) == RUNNING
    assert split_state(record, COMPLETED, parts | {"frame_000005.merge-failed"}, 0) == FAILED
    assert split_state(record, COMPLETED, parts | {"frame_000005.png"}, 0) == COMPLETED
    assert split_state(record, FAILED, parts - {part_file_name(5, 2)}, 1) == FAILED  # recovered as parts
    # Ended complete, the merged frame deleted since: failed.
    assert split_state(_record(spec, COMPLETED), COMPLETED, parts, 0) == FAILED
