"""Downloads: frames fetched while the job runs, each verified against the cluster's SHA-256."""

from __future__ import annotations

import json
from pathlib import Path

from braas_hpc.core.transfer import ledger_path
from tests.conftest import run_cli
from tests.helpers import check_frame, make_sample


def test_follow_fetches_while_running_and_verifies(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "project")
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1-4", "--max-parallel", "1", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["job"]
    dest = tmp_path / "frames"

    followed = run_cli("download", job, "--dest", str(dest), "--follow", timeout=900)
    assert followed.returncode == 0, followed.stderr
    rounds = [line for line in followed.stderr.splitlines() if "new frame(s)" in line]
    assert len(rounds) >= 2, followed.stderr  # frames arrived in several rounds: fetched while it ran
    frames = sorted(dest.glob("frame_*.png"))
    assert [p.name for p in frames] == [f"frame_{f:06d}.png" for f in range(1, 5)]
    for frame in frames:
        check_frame(frame)
    assert json.loads(run_cli("status", job, "--json").stdout)["jobs"][0]["state"] == "COMPLETED"

    # A frame damaged on this side (same size) is noticed and fetched again.
    damaged = frames[2]
    good = damaged.read_bytes()
    damaged.write_bytes(bytes(len(good)))
    again = json.loads(run_cli("download", job, "--dest", str(dest), "--json").stdout)
    assert again["refetched"] == [damaged.name] and again["downloaded"] == 1 and again["skipped"] == 3
    assert damaged.read_bytes() == good

    # Without the ledger (frames copied here by other means) nothing is fetched twice.
    ledger_path(job, dest).unlink()
    fresh = json.loads(run_cli("download", job, "--dest", str(dest), "--json").stdout)
    assert fresh["downloaded"] == 0 and fresh["skipped"] == 4
