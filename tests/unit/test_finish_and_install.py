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
from braas_hpc.core.presets import BUILTIN_DIR, load_preset_file, preset_from_dict
from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.schedulers.base import Round, finish_request
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


def test_a_group_members_summary_counts_the_frames_it_holds(tmp_path: Path) -> None:
    """A member of a job over several clusters: the frames of its later rounds count, a chunk another
    cluster took (its task's marker: moved) does not."""
    job = tmp_path / "film.a"
    for d in ("out", "status"):
        (job / d).mkdir(parents=True)
    (job / "frames.txt").write_text("1\n2\n")
    (job / "frames-r1.txt").write_text("7\n")
    for f in (1, 7):
        (job / "out" / f"frame_{f:06d}.png").write_bytes(b"png")
    _marker(job, "task-1.json", frames=[1], state="done", started=1.0, finished=2.0, exit_code=0, timings={"1": 1.0})
    _marker(job, "task-2.json", frames=[2], state="moved", started=1.0, finished=1.0, exit_code=0, timings={})
    _marker(job, "r1-task-1.json", frames=[7], state="done", started=3.0, finished=4.0, exit_code=0,
            timings={"7": 1.0})
    summary = finish_task.summarize(str(job), "png", finish_task.read_markers(str(job)))
    assert summary["frames_total"] == 2 and summary["missing"] == [] and summary["last_frame"] == "frame_000007.png"


def _spec(name: str, gpu: bool):  # noqa: ANN202
    spec, preset = build_spec(SubmitRequest(scene=SCENE, preset=name, frames="1-10", chunk=2,
                                            device="GPU" if gpu else "CPU", account="PROJ-1"))
    return dataclasses.replace(spec, name="golden-job"), preset


def _finish_text(spec, preset) -> str:  # noqa: ANN001
    paths = JobPaths("/cluster/work/braas-hpc", spec.name)
    return scheduler_for(preset.scheduler).finish_script(spec, preset, paths, ["blender"], "/s/finish_task.py",
                                                         Round(0, 5))


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("#SBATCH ", "#PBS "))]


@pytest.mark.parametrize("partition", ["qgpu", "qgpu_exp", "qgpu_free", "qgpu_preempt"])
def test_a_gpu_job_at_it4i_never_sends_its_finish_to_qcpu(partition: str) -> None:
    """A project with Karolina GPU node-hours only may be refused in qcpu (or billed a CPU node): the finish
    step of a GPU job stays in the job's GPU partition, with one GPU (a GPU is what such a project pays)."""
    spec, preset = _spec("karolina", gpu=True)
    spec = dataclasses.replace(spec, partition=partition)
    finish, _ = finish_request(spec, preset)
    assert (finish.partition, finish.gpus, finish.cpus, finish.whole_node) == (partition, 1, 16, False)
    lines = _directives(_finish_text(spec, preset))
    assert f"#SBATCH --partition={partition}" in lines and "#SBATCH --gpus=1" in lines, lines
    assert not [line for line in lines if "qcpu" in line or "--array" in line or "--exclusive" in line], lines
    assert "#SBATCH --job-name=golden-job-finish" in lines and "#SBATCH --time=00:15:00" in lines


def test_the_finish_goes_to_qcpu_only_when_the_preset_says_so(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A site (or a user whose project has CPU hours) may name the finish step's partition per partition (qcpu
    itself sends its finish on to qcpu_exp, so the chain ends there)."""
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(tmp_path))
    (tmp_path / "presets").mkdir()
    text = (BUILTIN_DIR / "karolina.toml").read_text().replace(
        'cycles_device = "CUDA"\nmax_walltime_min = 2880\nnote = "8x', 'cycles_device = "CUDA"\n'
        'max_walltime_min = 2880\nfinish = "qcpu_exp"\nnote = "8x', 1)
    assert 'finish = "qcpu_exp"' in text
    (tmp_path / "presets" / "karolina.toml").write_text(text)
    spec, preset = _spec("karolina", gpu=True)
    finish, _ = finish_request(spec, preset)
    assert (finish.partition, finish.gpus, finish.cpus) == ("qcpu_exp", 0, 1)
    lines = _directives(_finish_text(spec, preset))
    assert "#SBATCH --partition=qcpu_exp" in lines and not [line for line in lines if "--gpus" in line], lines


def test_the_finish_at_lumi_loads_no_gpu_modules() -> None:
    spec, preset = _spec("lumi", gpu=True)
    rocm = [line for line in preset.env if "rocm" in line]
    assert rocm, preset.env  # the render tasks do load them
    text = _finish_text(spec, preset)
    assert not [line for line in text.splitlines() if "module" in line or "rocm" in line], text
    assert "#SBATCH --partition=small-g" in text and "#SBATCH --gres=gpu:1" in text


@pytest.mark.parametrize(("partition", "expected"), [
    ("standard-g", ("small-g", 1, 7)), ("dev-g", ("small-g", 1, 7)), ("small-g", ("small-g", 1, 7)),
    ("standard", ("small", 0, 1)), ("small", ("small", 0, 1)), ("debug", ("debug", 0, 1)),
])
def test_lumi_sends_whole_node_and_dev_jobs_finish_to_the_shared_partition(partition: str,
                                                                           expected: tuple[str, int, int]) -> None:
    spec, preset = _spec("lumi", gpu=partition.endswith("-g"))
    finish, _ = finish_request(dataclasses.replace(spec, partition=partition), preset)
    assert (finish.partition, finish.gpus, finish.cpus) == expected


def test_a_preset_without_a_word_keeps_the_finish_in_the_job_partition() -> None:
    """No `finish` anywhere: the job's own partition (one the project can use), never the CPU default."""
    preset = preset_from_dict({"name": "site", "scheduler": "slurm", "host": "h", "blender": "b",
                               "partition_cpu": "cpu", "partition_gpu": "gpu", "gpu_request": "gres",
                               "env": ["module load cuda"],
                               "partitions": {"cpu": {"kind": "cpu", "cpus_per_task": 8},
                                              "gpu": {"kind": "gpu", "gpus_per_task": 2, "cpus_per_task": 12,
                                                      "cycles_device": "CUDA", "qos": "gq"}}}, "site.toml")
    spec, _ = _spec("karolina", gpu=True)
    finish, _ = finish_request(dataclasses.replace(spec, partition="gpu", gpus=2, cpus=12), preset)
    assert (finish.partition, finish.gpus, finish.cpus, finish.qos) == ("gpu", 1, 6, "gq")
    text = _finish_text(dataclasses.replace(spec, partition="gpu"), preset)
    assert "module load cuda" in text.splitlines()  # without finish_env the finish runs the preset's env
    finish, _ = finish_request(dataclasses.replace(spec, partition="cpu", gpus=0, cpus=8), preset)
    assert (finish.partition, finish.gpus, finish.cpus, finish.qos) == ("cpu", 0, 1, "")


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
