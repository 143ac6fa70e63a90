"""End to end on the real test cluster: pack, upload over SSH, Slurm array, Cycles, status, download."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import run_cli
from tests.helpers import REPO, check_frame, make_sample, partition_closed, sha256


def test_submit_render_download(testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    started = time.monotonic()
    scene = make_sample(tmp_path / "project")
    before = sha256(scene)

    # The jobs wait until the watch below has seen them queued, however fast the scheduler starts them.
    with partition_closed(testbed.slurm_conf):
        done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1-6", "--chunk", "2", "--json")
        assert done.returncode == 0, done.stderr
        submitted = json.loads(done.stdout)
        job = submitted["job"]
        assert submitted["preset"] == "testbed" and submitted["frames"] == "1-6" and submitted["tasks"] == 3
        assert len(submitted["scheduler_ids"]) == 1 and submitted["scheduler_ids"][0].isdigit()
        assert sha256(scene) == before

        # A second, one-frame job: the plain output ends with the job name, and status batches both.
        single = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "3")
        assert single.returncode == 0, single.stderr
        second = single.stdout.strip().splitlines()[-1]
        assert second.startswith("sample-") and second != job

        listed = run_cli("status", "--json")
        assert listed.returncode == 0, listed.stderr
        states = {s["job"]: s for s in json.loads(listed.stdout)["jobs"]}
        assert set(states) == {job, second}
        assert states[job]["frames_total"] == 6 and states[job]["state"] == "PENDING"

        # `status --watch` follows both until they end; not on a terminal it prints the lines that changed.
        watch = subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", "status", "--watch"], cwd=REPO,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert watch.stdout is not None
        first = [watch.stdout.readline() for _ in range(2)]
        assert all(line.startswith(f"{name}  testbed  PENDING") for line, name in zip(first, (job, second),
                                                                                      strict=True)), first
    out, err = watch.communicate(timeout=700)
    assert watch.returncode == 0, err
    blocks = "".join([*first, out]).strip().split(f"{job}  testbed  ")
    assert len(blocks) >= 3, out  # at least one block before the last: it kept watching
    assert blocks[-1].startswith("COMPLETED  frames 6/6") and f"{second}  testbed  COMPLETED  frames 1/1" in \
        out.strip().splitlines()[-2:], out
    for name in (job, second):
        waited = run_cli("wait", name, "--timeout", "600", timeout=700)
        assert waited.returncode == 0, waited.stdout + waited.stderr

    final = json.loads(run_cli("status", job, "--json").stdout)["jobs"][0]
    assert final["state"] == "COMPLETED" and final["frames_done"] == 6 and final["missing"] == ""
    assert final["tasks"] == {"COMPLETED": 3}  # Slurm really ran a 3-task array (sacct says so)

    dest = tmp_path / "frames"
    got = run_cli("download", job, "--dest", str(dest), "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["downloaded"] == 6
    assert sorted(p.name for p in dest.iterdir()) == [f"frame_{f:06d}.png" for f in range(1, 7)]
    for frame in dest.iterdir():
        check_frame(frame)
    again = json.loads(run_cli("download", job, "--dest", str(dest), "--json").stdout)
    assert again["downloaded"] == 0 and again["skipped"] == 6

    job_dir = f"{testbed.workdir}/braas-hpc-{testbed.user}/jobs/{job}"
    marker = json.loads(remote(f"cat {shlex.quote(job_dir)}/status/task-2.json").stdout)
    assert marker["frames"] == [3, 4] and marker["rendered"] == [3, 4] and marker["exit_code"] == 0
    print(f"end-to-end wall time: {time.monotonic() - started:.1f} s")


def test_rerun_of_a_finished_task_renders_nothing(testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "project")
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1-2", "--chunk", "2", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["job"]
    assert run_cli("wait", job, "--timeout", "600", timeout=700).returncode == 0
    job_dir = shlex.quote(f"{testbed.workdir}/braas-hpc-{testbed.user}/jobs/{job}")
    first = json.loads(remote(f"cat {job_dir}/status/task-1.json").stdout)
    assert first["rendered"] == [1, 2] and set(first["timings"]) == {"1", "2"}
    stamps = remote(f"stat -c %Y.%s {job_dir}/out/frame_000001.png {job_dir}/out/frame_000002.png").stdout

    # The same array task again, through Slurm (sbatch --wait returns when it has run).
    rerun = remote(f"cd {job_dir} && sbatch --wait --array=1 job.sh", timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    marker = json.loads(remote(f"cat {job_dir}/status/task-1.json").stdout)
    assert marker["rendered"] == [] and marker["skipped"] == [1, 2] and marker["timings"] == {}
    assert marker["exit_code"] == 0 and marker["started"] > first["started"]
    assert remote(f"stat -c %Y.%s {job_dir}/out/frame_000001.png {job_dir}/out/frame_000002.png").stdout == stamps
