"""A client killed during `submit` and run again does not create a second job (core.intents).

The cluster's `sbatch` is wrapped for this test so that it answers 6 s late for this job only; the
client is killed while it waits, after the scheduler has accepted the job. The second run of the same
command must report the same job and scheduler id, and the scheduler must hold exactly one job."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, run_cli
from tests.helpers import eventually
from tests.testbed import testbed as tb

SLOW_SBATCH = """#!/bin/sh
# Test wrapper (test_idempotent_submit): the real sbatch, answering late for the marked job only.
out=$(/usr/bin/sbatch "$@"); status=$?
case "$*" in *{marker}*) sleep 6 ;; esac
printf '%s\\n' "$out"
exit $status
"""


def test_a_killed_submit_run_again_makes_no_second_job(testbed, remote, sample_scene: Path, tmp_path: Path) -> None:  # noqa: ANN001
    marker = f"idem{secrets.token_hex(4)}"  # never a job of an earlier run (pids repeat; sacct keeps history)
    scene = tmp_path / f"{marker}.blend"
    scene.write_bytes(sample_scene.read_bytes())
    (tmp_path / "textures").symlink_to(sample_scene.parent / "textures")
    wrapper = tb.Layout.from_env().bin / "sbatch"
    assert not wrapper.exists()
    wrapper.write_text(SLOW_SBATCH.format(marker=marker))
    wrapper.chmod(0o755)
    argv = ["submit", str(scene), "--preset", "testbed", "--frames", "1-2", "--json"]
    try:
        client = subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", *argv], cwd=REPO, env=os.environ.copy(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the scheduler has the job: the client now waits for the answer
            if marker in remote("squeue -h -o %j; sacct -n -X -o JobName%60").stdout:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the job never reached the scheduler: {client.communicate(timeout=5)}")
        client.send_signal(signal.SIGKILL)
        client.wait(30)
        assert json.loads(run_cli("status", "--json", "--no-recover").stdout)["jobs"] == []  # nothing registered yet
        # The first run's sbatch finishes on the cluster and records its answer: until then a process
        # there still has the marker in its command line (`[i]` keeps pgrep's own shell out of it).
        eventually(lambda: remote(f"pgrep -u {testbed.user} -f '[{marker[0]}]{marker[1:]}'").returncode,
                   lambda status: status == 1, "the first run's sbatch to finish on the cluster", timeout=60)
        again = run_cli(*argv)
    finally:
        wrapper.unlink()
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    ids = remote(f"sacct -n -X -P -o JobID,JobName%80 | grep {marker} | grep -v _finish || true").stdout.split()
    arrays = {line.split("|")[0].split("_")[0] for line in ids if "finish" not in line}
    assert len(arrays) == 1, f"the scheduler holds {arrays} for one submission"
    assert result["scheduler_ids"] == [arrays.pop()]
    (registered,) = json.loads(run_cli("status", "--json", "--no-recover").stdout)["jobs"]
    assert registered["job"] == result["job"]
    assert run_cli("wait", result["job"], "--timeout", "600", timeout=700).returncode == 0

    # The same command once more, now that the first job is registered: a new job, on purpose.
    third = json.loads(run_cli(*argv).stdout)
    assert third["job"] != result["job"]
