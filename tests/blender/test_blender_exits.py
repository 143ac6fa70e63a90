"""No Blender process outlives its work: the bpy-based `blender` leaves once done whatever a script
left running, and a render task whose frame hangs is stopped by its watchdog with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.blender.test_bpy_blender import LAUNCHER, png_size
from tests.helpers import REPO

RENDER_TASK = REPO / "cluster_scripts" / "render_task.py"

# A script that leaves a thread Python's shutdown waits for: what a hang at exit looks like.
LEFT_THREAD = """
import threading, time
threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
"""
# Frame 2 never finishes (a scene whose evaluation hangs).
HANG_ON_FRAME_2 = """
import time, bpy
def hang(scene, *_):
    if scene.frame_current == 2:
        time.sleep(3600)
bpy.app.handlers.frame_change_pre.append(hang)
"""


def test_launcher_leaves_with_its_status_once_done(scene: Path, tmp_path: Path) -> None:
    (tmp_path / "left_thread.py").write_text(LEFT_THREAD)
    done = subprocess.run([sys.executable, str(LAUNCHER), "-b", str(scene), "-P", str(tmp_path / "left_thread.py"),
                           "-o", "//out/f_####", "-F", "PNG", "-f", "1"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "out" / "f_0001.png") == (64, 48)


def test_launcher_keeps_a_failing_status_when_leaving_early(scene: Path, tmp_path: Path) -> None:
    (tmp_path / "fail.py").write_text(LEFT_THREAD + "raise SystemExit(7)\n")
    done = subprocess.run([sys.executable, str(LAUNCHER), "-b", str(scene), "-P", str(tmp_path / "fail.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 7, done.stderr


def test_a_hung_frame_is_stopped_by_the_watchdog(scene: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "frames.txt").write_text("1,2,3\n")
    (tmp_path / "hang.py").write_text(HANG_ON_FRAME_2)
    env = {**os.environ, "BRAAS_WATCHDOG_FACTOR": "3", "BRAAS_WATCHDOG_MIN_SECONDS": "2"}
    done = subprocess.run([sys.executable, str(LAUNCHER), "-b", str(scene), "-P", str(tmp_path / "hang.py"),
                           "-P", str(RENDER_TASK), "--", "--job-dir", str(job), "--task", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    out = sorted(p.name for p in (job / "out").iterdir() if not p.name.startswith("."))
    assert out == ["frame_000001.png"]  # frame 1 kept, frame 2 hung, frame 3 left for recovery
    marker = json.loads((job / "status" / "task-1.json").read_text())
    assert marker["state"] == "failed" and marker["exit_code"] == 5
    assert marker["rendered"] == [1] and "frame 2 made no progress" in marker["error"]
    assert "braas-hpc: watchdog: a frame may take 3 x" in done.stdout
    assert "braas-hpc: watchdog: frame 2 made no progress" in done.stderr
