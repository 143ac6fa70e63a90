"""The finish step's summary (pure Python, from real files), its batch scripts, and the install helpers."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from braas_hpc.core import scripts
from braas_hpc.core.cluster_blender import BlenderSource, _check_arch, archive_name
from braas_hpc.core.errors import UsageError
from braas_hpc.core.jobs import JobPaths
from braas_hpc.core.presets import BUILTIN_DIR, load_preset_file
from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.schedulers.base import Round
from braas_hpc.core.spec import SubmitRequest, build_spec
from braas_hpc.core.workdir import _set_in_text, hint_patterns
from cluster_scripts import finish_task
from tests.helpers import REPO

SCENE = REPO / "examples" / "sample" / "sample.blend"


def _marker(job: Path, name: str, **values: object) -> None:
    (job / "status" / name).write_text(json.dumps(values))


def test_summary_lists_missing_frames_and_hours(tmp_path: Path) -> None:
    job = tmp_path / "job-1"
    for d in ("out", "status"):
        (job / d).mkdir(parents=True)
    (job / "frames.txt").write_text("1,2\n3,4\n5,6\n")
    for f in (1, 2, 3, 4):
        (job / "out" / f"frame_{f:06d}.png").write_bytes(b"png")
    (job / "out" / "frame_000005.png").write_bytes(b"")  # empty: not a frame
    _marker(job, "task-1.json", started=1000.0, finished=1060.0, threads=4, gpus=0, exit_code=0,
            timings={"1": 20.0, "2": 40.0})
    _marker(job, "task-2.json", started=1000.0, finished=1030.0, threads=4, gpus=1, exit_code=0,
            timings={"3": 10.0, "4": 10.0})
    _marker(job, "task-3.json", started=1010.0, finished=None, threads=4, gpus=0, exit_code=None, timings={})
    os.utime(job / "status" / "task-3.json", (1020.0, 1020.0))  # killed: its last write is its end
    summary = finish_task.summarize(str(job), "png", finish_task.read_markers(str(job)))
    assert summary["frames_total"] == 6 and summary["frames_ok"] == 4 and summary["missing"] == [5, 6]
    assert summary["seconds_per_frame"] == {"mean": 20.0, "min": 10.0, "max": 40.0}
    assert summary["core_hours"] == round((60 * 4 + 30 * 4 + 10 * 4) / 3600, 6)
    assert summary["gpu_hours"] == round(30 / 3600, 6)
    assert summary["tasks_failed"] == ["task-3.json"] and summary["wall_seconds"] == 60.0
    assert summary["last_frame"] == "frame_000004.png"


def _spec(name: str, gpu: bool):  # noqa: ANN202
    spec, preset = build_spec(SubmitRequest(scene=SCENE, preset=name, frames="1-10", chunk=2,
                                            device="GPU" if gpu else "CPU", account="PROJ-1"))
    return dataclasses.replace(spec, name="golden-job"), preset


@pytest.mark.parametrize(("name", "expect", "refuse"), [
    ("karolina", ["#SBATCH --partition=qcpu", "#SBATCH --cpus-per-task=1", "#SBATCH --time=00:15:00",
                  "#SBATCH --job-name=golden-job-finish"], ["--gpus", "--array", "--exclusive"]),
    ("polaris", ["#PBS -l select=1:ncpus=1", "#PBS -N golden-job-finish", "#PBS -A PROJ-1"], ["-J", "ngpus"]),
])
def test_finish_script_asks_for_one_core_and_no_gpu(name: str, expect: list[str], refuse: list[str]) -> None:
    spec, preset = _spec(name, gpu=True)
    paths = JobPaths("/cluster/work/braas-hpc", spec.name)
    text = scheduler_for(preset.scheduler).finish_script(spec, preset, paths, ["blender"], "/s/finish_task.py",
                                                         Round(0, 5))
    for line in expect:
        assert line in text.splitlines(), text
    assert not [w for w in refuse for line in text.splitlines() if line.startswith("#") and w in line], text
    assert "-P /s/finish_task.py -- --job-dir /cluster/work/braas-hpc/jobs/golden-job --format PNG" in text


def test_after_argv_waits_for_every_task() -> None:
    assert scheduler_for("slurm").after_argv(["12", "13"]) == ["--dependency=afterany:12:13"]
    assert scheduler_for("pbs").after_argv(["7[].srv"]) == ["-W", "depend=afterany:7[].srv"]


def test_scripts_version_covers_every_shipped_script() -> None:
    names = set(scripts.shipped_scripts())
    assert {"render_task.py", "devices.py", "finish_task.py"} <= names and "__init__.py" not in names
    manifest = json.loads(scripts.manifest_text())
    assert manifest["version"] == scripts.scripts_version() and set(manifest["files"]) == names


@pytest.mark.parametrize("name", ["blender.zip", "../blender.tar.xz", "-x.tar.xz", "blender 4.tar.gz", "blender"])
def test_odd_archive_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="not a Blender archive name"):
        archive_name(name)


def test_x86_build_refused_on_aarch64_nodes() -> None:
    vista = load_preset_file(BUILTIN_DIR / "vista.toml")
    with pytest.raises(UsageError, match="aarch64 nodes .* x86-64 build"):
        _check_arch(vista, "blender-4.5.4-linux-x64.tar.xz")
    _check_arch(load_preset_file(BUILTIN_DIR / "karolina.toml"), "blender-4.5.4-linux-x64.tar.xz")
    with pytest.raises(UsageError, match="one Blender source"):
        BlenderSource(url="https://x/b.tar.xz", path="/opt/blender").kind()


def test_hint_patterns_fill_placeholders_and_ranges() -> None:
    karolina = dataclasses.replace(load_preset_file(BUILTIN_DIR / "karolina.toml"), account="OPEN-12-3")
    paths = [p for p, _ in hint_patterns(karolina)]
    assert paths == ["/mnt/proj1/OPEN-12-3", "/mnt/proj1/open-12-3", "/mnt/proj2/OPEN-12-3", "/mnt/proj2/open-12-3",
                     "/mnt/proj3/OPEN-12-3", "/mnt/proj3/open-12-3", "/scratch/project/OPEN-12-3",
                     "/scratch/project/open-12-3"]
    # Without an account nothing is guessed from the patterns.
    assert hint_patterns(dataclasses.replace(karolina, account="")) == []


def test_set_workdir_keeps_the_rest_of_the_file() -> None:
    text = '# mine\nname = "x"\nworkdir = ""  # old\nport = 22\n\n[partitions.q]\nkind = "cpu"\n'
    assert _set_in_text(text, "/w/me") == text.replace('workdir = ""  # old', 'workdir = "/w/me"')
    assert _set_in_text('name = "x"\n[partitions.q]\n', "/w") == 'name = "x"\nworkdir = "/w"\n[partitions.q]\n'
