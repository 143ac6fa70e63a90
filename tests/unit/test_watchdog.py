"""The render task's watchdog: its rule, and a real process it stops (the Blender side is in
tests/blender/test_blender_exits.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "cluster_scripts"))
import watchdog  # noqa: E402

WATCHDOG = REPO / "cluster_scripts" / "watchdog.py"


def test_no_measure_no_limit_then_factor_with_a_floor() -> None:
    assert watchdog.limit_for(0.0, 10, 600) is None  # nothing measured: the walltime decides
    assert watchdog.limit_for(30.0, 10, 600) == 600  # the floor
    assert watchdog.limit_for(120.0, 10, 600) == 1200


def test_overdue_only_for_a_running_frame_past_the_limit() -> None:
    marker = {"state": "running", "current": {"frame": 3, "started": 1000.0}}
    assert watchdog.overdue(marker, 100.0, 1050.0) == 0
    assert watchdog.overdue(marker, 100.0, 1101.0) == 101.0
    assert watchdog.overdue(marker, None, 9999.0) == 0
    assert watchdog.overdue({**marker, "current": None}, 100.0, 9999.0) == 0  # between frames
    assert watchdog.overdue({**marker, "state": "done"}, 100.0, 9999.0) == 0


def test_the_slowest_frame_of_any_task_of_the_job_counts(tmp_path: Path) -> None:
    (tmp_path / "task-1.json").write_text(json.dumps({"timings": {"1": 2.5, "2": 4.0}}))
    (tmp_path / "r1-task-2.json").write_text(json.dumps({"timings": {"7": 9.5}}))
    (tmp_path / "task-3.json").write_text("{half-written")
    assert watchdog.slowest_frame(str(tmp_path / "task-1.json")) == 9.5


def test_a_hung_process_is_stopped_and_the_marker_says_why(tmp_path: Path) -> None:
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    marker = tmp_path / "task-1.json"
    marker.write_text(json.dumps({"state": "running", "timings": {"1": 0.5},
                                  "current": {"frame": 2, "started": time.time()}}))
    done = subprocess.run([sys.executable, str(WATCHDOG), "--pid", str(hung.pid), "--marker", str(marker),
                           "--factor", "2", "--min-seconds", "1"], capture_output=True, text=True, timeout=120)
    assert hung.wait(timeout=30) != 0  # stopped, not finished
    assert done.returncode == 1 and "frame 2 made no progress" in done.stderr
    after = json.loads(marker.read_text())
    assert after["state"] == "failed" and after["exit_code"] == watchdog.EXIT_CODE
    assert "frame 2" in after["error"] and after["current"] is None and after["timings"] == {"1": 0.5}


def test_the_watchdog_leaves_with_the_process_it_watches(tmp_path: Path) -> None:
    short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    marker = tmp_path / "task-1.json"
    marker.write_text(json.dumps({"state": "running", "timings": {}, "current": {"frame": 1, "started": 0}}))
    done = subprocess.run([sys.executable, str(WATCHDOG), "--pid", str(short.pid), "--marker", str(marker)],
                          capture_output=True, text=True, timeout=60)
    short.wait()
    assert done.returncode == 0 and json.loads(marker.read_text())["state"] == "running"
