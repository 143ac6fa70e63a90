"""The `local` preset as a scheduler, with real Cycles: a job submitted here outlives the command that
submitted it and answers every verb a cluster job does (status, wait, logs, resubmit, cancel); Ctrl+C on
`render` cancels its job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO, run_cli
from tests.helpers import check_frame, eventually, make_sample


def _until(condition: Callable[[], object], what: str, timeout: float = 120) -> object:
    """Wait for a condition the queue brings about in another process (tests.helpers.eventually)."""
    return eventually(condition, bool, what, timeout=timeout, every=0.05)


def _status(job: str) -> dict:
    done = run_cli("status", job, "--json")
    assert done.returncode == 0, done.stderr
    (found,) = json.loads(done.stdout)["jobs"]
    return found


def _job_processes(job: str) -> list[int]:
    """Processes whose command line names the job's directory (its tasks' bash and Blender)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and job in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_local_job_is_submitted_watched_logged_and_resubmitted_like_a_cluster_job(
        user_dirs: dict[str, str], tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "project")
    submitted = run_cli("submit", str(scene), "--preset", "local", "--frames", "1-3", "--chunk", "1", "--json")
    assert submitted.returncode == 0, submitted.stderr
    result = json.loads(submitted.stdout)
    job, job_dir = result["job"], Path(result["job_dir"])
    assert result["tasks"] == 3 and len(result["scheduler_ids"]) == 1 and result["finish_id"]

    waited = run_cli("wait", job, "--json")  # the submitting command has long exited: the queue renders

    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["state"] == "COMPLETED"
    for frame in (1, 2, 3):
        check_frame(job_dir / "out" / f"frame_{frame:06d}.png")
    status = _until(lambda: (s := _status(job))["summary"] and s, "the finish step's summary")
    assert status["tasks"] == {"COMPLETED": 3} and (job_dir / "thumb.jpg").is_file()
    logs = run_cli("logs", job, "--task", "2")
    assert logs.returncode == 0 and "BRAAS-PROGRESS task=2 frame=2" in logs.stdout, logs.stdout + logs.stderr

    (job_dir / "out" / "frame_000002.png").unlink()
    again = run_cli("resubmit", job, "--json")

    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["frames"] == "2"
    waited = run_cli("wait", job, "--json")
    assert waited.returncode == 0 and json.loads(waited.stdout)["state"] == "COMPLETED", waited.stderr
    check_frame(job_dir / "out" / "frame_000002.png")
    assert "status=rendered" in (job_dir / "log" / "r1-task-1.log").read_text()


def test_cancel_stops_a_local_job_and_its_blender(user_dirs: dict[str, str], tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "project")
    submitted = run_cli("submit", str(scene), "--preset", "local", "--frames", "1-400", "--chunk", "200", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job, out = json.loads(submitted.stdout)["job"], Path(json.loads(submitted.stdout)["job_dir"]) / "out"
    _until(lambda: any(out.iterdir()), "a first frame")

    cancelled = run_cli("cancel", job)

    assert cancelled.returncode == 0, cancelled.stderr
    _until(lambda: not _job_processes(job), "the job's processes gone")
    assert _status(job)["state"] == "CANCELLED"
    assert len(list(out.iterdir())) < 400


def test_ctrl_c_on_render_cancels_its_job(user_dirs: dict[str, str], tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "project")
    render = subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", "render", str(scene), "--frames", "1-400",
                               "--chunk", "400"], cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    jobs = Path(user_dirs["BRAAS_HPC_DATA_DIR"]) / "local" / "braas-hpc" / "jobs"
    out = _until(lambda: next((d / "out" for d in jobs.glob("*") if any((d / "out").glob("frame_*"))), None)
                 if jobs.is_dir() else None, "a first frame")
    job = out.parent.name

    render.send_signal(signal.SIGINT)
    _, stderr = render.communicate(timeout=120)

    assert render.returncode == 130, stderr
    _until(lambda: not _job_processes(job), "the job's processes gone")
    assert _status(job)["state"] == "CANCELLED"


def test_a_restart_mid_render_loses_no_frame(user_dirs: dict[str, str], tmp_path: Path) -> None:
    """What a computer restarted mid-render leaves: the queue's runner and the task's Blender gone without
    a word. The next `wait` finds the task failed, starts the queue again and resubmits the lost frames."""
    scene = make_sample(tmp_path / "project")
    submitted = run_cli("submit", str(scene), "--preset", "local", "--frames", "1-40", "--chunk", "20", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job, job_dir = json.loads(submitted.stdout)["job"], Path(json.loads(submitted.stdout)["job_dir"])
    _until(lambda: any((job_dir / "out").glob("frame_*")), "a first frame")
    runners = [pid for pid in _job_processes("local_queue.py") if _cmdline(pid).endswith("\0work\0")]
    assert runners, "no runner of the local queue"
    for pid in runners + _job_processes(job):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    rendered_before = len(list((job_dir / "out").glob("frame_*")))

    waited = run_cli("wait", job, "--json")

    assert waited.returncode == 0, waited.stderr
    final = json.loads(waited.stdout)
    assert final["state"] == "COMPLETED" and final["frames_done"] == 40
    for frame in range(1, 41):
        check_frame(job_dir / "out" / f"frame_{frame:06d}.png")
    assert rendered_before < 40
    assert list((job_dir / "log").glob("r1-task-*.log")), "the lost frames came back in a new round"


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
