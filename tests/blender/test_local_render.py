"""The built-in `local` preset: the same job script and render task as a cluster, real Cycles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import run_cli
from tests.helpers import check_frame, make_sample, sha256


def _job_dir(data_dir: str, job: str) -> Path:
    return Path(data_dir) / "local" / "braas-hpc" / "jobs" / job


def test_render_local_end_to_end(user_dirs: dict[str, str], tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "project")
    texture = scene.parent / "textures" / "checker.png"
    before = {p: (sha256(p), p.stat().st_mtime_ns) for p in (scene, texture)}
    out = tmp_path / "frames"

    done = run_cli("render", str(scene), "--frames", "1-4", "--chunk", "2", "--out", str(out), "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["frames"] == "1-4" and result["tasks"] == 2
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{f:06d}.png" for f in range(1, 5)]
    for frame in out.iterdir():
        check_frame(frame)
    # The user's files are only read: packing happens on a copy elsewhere.
    assert {p: (sha256(p), p.stat().st_mtime_ns) for p in (scene, texture)} == before
    assert sorted(p.name for p in scene.parent.iterdir()) == ["sample.blend", "textures"]

    job_dir = _job_dir(user_dirs["BRAAS_HPC_DATA_DIR"], result["job"])
    marker = json.loads((job_dir / "status" / "task-2.json").read_text())
    assert marker["frames"] == [3, 4] and marker["rendered"] == [3, 4] and marker["exit_code"] == 0
    assert set(marker["timings"]) == {"3", "4"}

    # Re-running a task whose frames exist renders nothing again.
    frame3 = job_dir / "out" / "frame_000003.png"
    mtime = frame3.stat().st_mtime_ns
    task_log = job_dir / "log" / "task-2.log"  # the task's output goes to its log, as on a cluster
    logged = task_log.read_text()
    assert "status=rendered" in logged
    rerun = subprocess.run(["bash", str(job_dir / "job.sh")], env={**os.environ, "BRAAS_TASK_ID": "2"},
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    marker = json.loads((job_dir / "status" / "task-2.json").read_text())
    assert marker["rendered"] == [] and marker["skipped"] == [3, 4] and marker["timings"] == {}
    assert frame3.stat().st_mtime_ns == mtime
    again = task_log.read_text()[len(logged):]
    assert "status=skipped" in again and "status=rendered" not in again


def test_missing_texture_is_listed_before_rendering(user_dirs: dict[str, str], tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "project")
    shutil.rmtree(scene.parent / "textures")

    done = run_cli("render", str(scene), "--frames", "1")

    assert done.returncode == 2
    assert "uses files that do not exist" in done.stderr and "Image 'checker.png'" in done.stderr
    assert not (Path(user_dirs["BRAAS_HPC_DATA_DIR"]) / "local" / "braas-hpc" / "jobs").exists()


def test_an_out_folder_the_system_refuses_is_a_clear_error_naming_the_frames(user_dirs: dict[str, str],
                                                                            tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "project")
    done = run_cli("render", str(scene), "--frames", "1", "--out", "/proc/braas-frames")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "download destination /proc/braas-frames cannot be made" in done.stderr
    frames = done.stderr.rsplit("the frames are in ", 1)[-1].strip()
    assert sorted(p.name for p in Path(frames).iterdir()) == ["frame_000001.png"]
