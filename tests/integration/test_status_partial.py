"""`status` answers per cluster: a cluster that does not answer, or a job whose preset is gone, is
listed with its error and hides none of the others; `forget` takes jobs off the list."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from braas_hpc.core import registry
from tests.conftest import run_cli


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: bound once to pick it, closed without listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def closed_preset(testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: ANN001
    """The session's presets in a directory of this test's own, plus `closedport`: the test cluster's
    preset pointed at a closed port (the other tests keep their presets list)."""
    config = tmp_path / "config"
    shutil.copytree(os.environ["BRAAS_HPC_CONFIG_DIR"], config)
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(config))
    text = (config / "presets" / "testbed.toml").read_text()
    assert 'name = "testbed"' in text and "port = 2222" in text
    (config / "presets" / "closedport.toml").write_text(
        text.replace('name = "testbed"', 'name = "closedport"').replace("port = 2222", f"port = {_closed_port()}"))
    return "closedport"


def _submit(scene: Path, preset: str) -> str:
    done = run_cli("submit", str(scene), "--preset", preset, "--frames", "1", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["job"]


def test_one_cluster_down_hides_no_other_job(closed_preset: str, sample_scene: Path) -> None:
    good, local = _submit(sample_scene, "testbed"), _submit(sample_scene, "local")
    for job in (good, local):
        waited = run_cli("wait", job)
        assert waited.returncode == 0, waited.stderr
    # Jobs as the registry records them on a cluster that is down, and after their preset file was removed.
    spec, root = registry.get_job(good).spec, registry.get_job(good).remote_root
    closed, doomed = f"{good}-closed", f"{good}-doomed"
    registry.add_job(dataclasses.replace(spec, name=closed, preset=closed_preset), root, {"4242": 1}, "RUNNING")
    registry.add_job(dataclasses.replace(spec, name=doomed, preset="doomed"), root, {"4243": 1}, "COMPLETED")

    done = run_cli("status", "--json")

    assert done.returncode == 3, done.stderr
    entries = json.loads(done.stdout)
    assert [e["job"] for e in entries] == [good, local, closed, doomed]
    for entry in entries[:2]:
        assert (entry["state"], entry["frames_done"], entry["error"]) == ("COMPLETED", 1, None), entry
    refused = entries[2]
    assert (refused["state"], refused["frames_done"], refused["frames_total"]) == ("UNKNOWN", None, 1)
    assert refused["error"]["kind"] == "connection"
    assert f"[Errno {errno.ECONNREFUSED}]" in refused["error"]["message"], refused  # the refusal, as the OS said it
    assert entries[3]["error"] == {"kind": "preset_missing", "message": (
        f"preset 'doomed' no longer exists: braas-hpc forget {doomed} (in Blender: Remove from List)")}

    text = run_cli("status", "--no-recover")
    assert text.returncode == 3, text.stderr
    lines = text.stdout.splitlines()
    assert lines[:2] == [f"{good}  testbed  COMPLETED  frames 1/1", f"{local}  local  COMPLETED  frames 1/1"]
    assert lines[2].startswith(f"closedport did not answer (connection) for {closed}: ")
    assert f"{doomed}: preset 'doomed' no longer exists" in text.stdout
    assert run_cli("status", good, local).returncode == 0  # only the named jobs' clusters are asked

    # Watching ends once the others have ended: waiting brings no preset back.
    watched = run_cli("status", "--watch", good, doomed)
    assert watched.returncode == 3, watched.stderr
    assert f"{good}  testbed  COMPLETED" in watched.stdout and "preset 'doomed' no longer exists" in watched.stdout

    # forget: an ended job goes; one recorded running whose cluster cannot say otherwise stays unless forced.
    assert run_cli("forget", doomed).returncode == 0
    kept = run_cli("forget", closed)
    assert kept.returncode == 2
    assert f"job {closed} is RUNNING as far as braas-hpc knows: it may still be using the allocation" in kept.stderr
    assert "Cancel it first" in kept.stderr and "--force" in kept.stderr
    assert closed in [r.name for r in registry.list_jobs()]
    forced = run_cli("forget", closed, "--force")
    assert forced.returncode == 0, forced.stderr
    after = run_cli("status", "--json")
    assert after.returncode == 0 and [e["job"] for e in json.loads(after.stdout)] == [good, local]
