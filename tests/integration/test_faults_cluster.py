"""Faults on the cluster side while a job runs and a client watches it: the login node's sshd restarted
(every open connection dropped) during `wait`, and slurmd killed during a render. After each, `wait`
ends with every frame, each checked as a valid frame of the scene. Counts go to docs/reliability.md."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, run_cli
from tests.helpers import check_frame
from tests.testbed import testbed as tb

RUNS = 2
DOWN_S = 9.0


def _submit(scene: Path, frames: str) -> dict:
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", frames, "--chunk", "5", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _watch(job: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", "wait", job, "--timeout", "600", "--json"],
                            cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _restart_sshd(layout: tb.Layout) -> None:
    """Every process of the test cluster's sshd (the listener and each open connection), then a new one."""
    config = str(layout.sshd / "sshd_config")
    subprocess.run(["pkill", "-KILL", "-f", f"sshd.*{config}"], check=False)
    subprocess.run(["pkill", "-KILL", "-u", "braastb", "-x", "sshd"], check=False)  # connection children
    time.sleep(DOWN_S)  # longer than the watcher's first poll intervals: a poll meets the closed port
    tb.start_sshd(layout)


def _frames_ok(job: dict, tmp_path: Path, count: int) -> None:
    dest = tmp_path / job["job"]
    got = run_cli("download", job["job"], "--dest", str(dest), "--json")
    assert got.returncode == 0, got.stderr
    frames = sorted(dest.glob("frame_*.png"))
    assert len(frames) == count
    for frame in frames:
        check_frame(frame)


def test_sshd_restarted_while_a_client_waits(testbed, sample_scene: Path, tmp_path: Path) -> None:  # noqa: ANN001
    layout = tb.Layout.from_env()
    restarts = outages = 0
    for _ in range(RUNS):
        job = _submit(sample_scene, "1-40")
        watcher = _watch(job["job"])
        for _ in range(2):
            time.sleep(1)
            _restart_sshd(layout)
            restarts += 1
        out, err = watcher.communicate(timeout=700)
        assert watcher.returncode == 0, err
        outages += err.count("trying again")  # polls that met the dropped connection or the closed port
        final = json.loads(out)
        assert final["state"] == "COMPLETED" and final["frames_done"] == 40
        _frames_ok(job, tmp_path, 40)
    assert outages >= RUNS, "the restarts never reached the watching client: the test injected nothing"
    print(f"FIGURES sshd-restart runs={RUNS} restarts={restarts} polls_hit={outages} frames_checked={RUNS * 40} "
          "lost=0")


def test_slurmd_killed_during_a_render(testbed, remote, sample_scene: Path, tmp_path: Path) -> None:  # noqa: ANN001
    layout = tb.Layout.from_env()
    for _ in range(RUNS):
        job = _submit(sample_scene, "1-20")
        out_dir = f"{job['job_dir']}/out"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and remote(f"ls {out_dir} | grep -c frame_").stdout.strip() in ("", "0"):
            time.sleep(0.3)
        pid = int(layout.pid_file("slurmd").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)  # mid-render: the node's daemon is gone
        time.sleep(3)
        tb.up()  # the node's daemon back, as an admin would bring it
        waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert json.loads(waited.stdout)["frames_done"] == 20
        _frames_ok(job, tmp_path, 20)
    print(f"FIGURES slurmd-kill runs={RUNS} kills={RUNS} frames_checked={RUNS * 20} lost=0")
