"""A multilayer EXR scene rendered here by the render task and given a thumbnail by the finish step, with
bpy 4.5 and with bpy 5.0 (which writes multi-part EXR files when the scene's "Interleave" is off)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import REPO, check_frame, exr_header, make_sample, make_variant


def test_multilayer_exr_with_passes_and_its_thumbnail(tmp_path: Path, user_dirs: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch, bpy_path: str) -> None:
    sample = make_sample(tmp_path / "project")
    scene = make_variant(sample, sample.with_name("passes.blend"), bpy_path, file_format="OPEN_EXR_MULTILAYER",
                         resolution_x=320, resolution_y=180, samples=4, frame_start=2, frame_end=2,
                         use_exr_interleave=False,  # 5.0: one part per layer and pass
                         use_preview=True,  # an extra JPEG per EXR, which a job does not leave behind
                         view_layers={"ViewLayer": {"use_pass_z": True}, "Extra": {"use": True},
                                      "Off": {"use": False}})
    if bpy_path:  # the render task runs in the bpy this Python imports: 5.0 from here on
        monkeypatch.setenv("PYTHONPATH", bpy_path)
    done = run_cli("render", str(scene), "--out", str(tmp_path / "frames"), "--json")  # frames: the scene's (2)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["frames"] == "2"
    frame = tmp_path / "frames" / "frame_000002.exr"
    channels, size, _ = exr_header(frame)
    multipart = bool(int.from_bytes(frame.read_bytes()[4:8], "little") & 0x1000)
    assert multipart == bool(bpy_path)
    assert size == (320, 180)
    assert {"ViewLayer.Combined.R", "ViewLayer.Depth.Z", "Extra.Combined.R"} <= set(channels), channels
    assert not [c for c in channels if c.startswith("Off.")]
    job_dir = Path(result["job_dir"])
    assert sorted(p.name for p in (job_dir / "out").iterdir()) == ["frame_000002.exr"]  # no temp or preview file
    marker = json.loads((job_dir / "status" / "task-1.json").read_text())
    assert marker["blender"].startswith("5.0" if bpy_path else "4.5")

    # The finish step, as the cluster runs it (through the same `blender` stand-in).
    finish = [sys.executable, str(REPO / "braas_hpc" / "bpy_blender.py"), "-b", "--factory-startup", "-Y", "-t", "1",
              "-P", str(REPO / "cluster_scripts" / "finish_task.py"), "--", "--job-dir", str(job_dir),
              "--format", "OPEN_EXR_MULTILAYER"]
    ran = subprocess.run(finish, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["thumbnail"] == "thumb.jpg" and summary["last_frame"] == "frame_000002.exr", summary
    check_frame(job_dir / "thumb.jpg", (256, 144), kind="JPEG")

    # A task told to render a scene the file does not hold stops at once and says so in its marker.
    task = [sys.executable, str(REPO / "braas_hpc" / "bpy_blender.py"), "-b", "-Y", str(job_dir / "in" / "scene.blend"),
            "-P", str(REPO / "cluster_scripts" / "render_task.py"), "--", "--job-dir", str(job_dir), "--task", "1",
            "--format", "OPEN_EXR_MULTILAYER", "--scene=Elsewhere", "--marker-prefix", "x-"]
    ran = subprocess.run(task, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    marker = json.loads((job_dir / "status" / "x-task-1.json").read_text())
    assert ran.returncode == 2 and marker["exit_code"] == 2 and "no scene 'Elsewhere'" in marker["error"], ran.stderr
