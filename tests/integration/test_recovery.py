"""Automatic recovery on the test cluster: frames lost to a cancelled task or vanished from disk come
back without the user asking, finished frames are not rendered again, and the retry limit holds."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from tests.conftest import run_cli


def _json(*args: str) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_cancelled_task_is_rendered_again_by_itself(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-6", "--chunk", "2",
                "--max-parallel", "1")
    array = job["scheduler_ids"][0]
    assert remote(f"scancel {array}_3").returncode == 0  # task 3 (frames 5, 6) never runs
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    final = json.loads(waited.stdout)
    assert waited.returncode == 0 and final["state"] == "COMPLETED" and final["frames_done"] == 6, waited.stderr
    job_dir = shlex.quote(job["job_dir"])
    marker = json.loads(remote(f"cat {job_dir}/status/r1-task-1.json").stdout)
    assert marker["frames"] == [5, 6] and marker["rendered"] == [5, 6]  # only the lost frames
    assert remote(f"test -e {job_dir}/status/r2-task-1.json").returncode != 0  # one round was enough


def test_frames_lost_later_come_back_until_the_retry_limit(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-3", "--retries", "1")
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
    frame = shlex.quote(f"{job['job_dir']}/out/frame_000002.png")
    assert remote(f"rm {frame}").returncode == 0
    status = run_cli("status", job["job"], "--json")
    (current,) = json.loads(status.stdout)
    assert "1 lost frame(s) resubmitted as round 1" in status.stderr
    assert current["state"] in ("PENDING", "RUNNING", "UNKNOWN", "COMPLETED")  # UNKNOWN: not in sacct yet
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
    assert remote(f"test -s {frame}").returncode == 0

    assert remote(f"rm {frame}").returncode == 0  # lost again: the one retry is used up
    (current,) = json.loads(run_cli("status", job["job"], "--json").stdout)
    assert current["state"] == "FAILED" and current["missing"] == [2]
    waited = run_cli("wait", job["job"], "--timeout", "60", timeout=120)
    assert waited.returncode == 1 and "missing frames: 2" in waited.stdout


def test_a_task_killed_mid_render_keeps_its_finished_frames(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    """What a preemptible queue does to a task: stopped half-way. Its finished frames stay, only the
    rest is rendered again."""
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-40", "--chunk", "40")
    out = shlex.quote(f"{job['job_dir']}/out")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and remote(f"test -s {out}/frame_000002.png").returncode != 0:
        time.sleep(0.3)
    assert remote(f"scancel {job['scheduler_ids'][0]}").returncode == 0  # preempted after a few frames
    time.sleep(2)  # the task is gone: what is in out/ now is what it finished
    kept = set(remote(f"ls {out}").stdout.split())
    assert "frame_000001.png" in kept and "frame_000040.png" not in kept
    waited = run_cli("wait", job["job"], "--timeout", "600", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    marker = json.loads(remote(f"cat {shlex.quote(job['job_dir'])}/status/r1-task-1.json").stdout)
    assert not set(marker["frames"]) & {int(n[6:12]) for n in kept if n.startswith("frame_")}
    assert sorted(marker["rendered"]) == marker["frames"] and 40 in marker["frames"]
