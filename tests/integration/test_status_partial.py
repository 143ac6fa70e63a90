"""`status` answers per cluster: a cluster that does not answer, or a job whose preset is gone, is
listed with its error and hides none of the others; `forget` takes jobs off the list."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import socket
import subprocess
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
def broken_presets(testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:  # noqa: ANN001
    """The session's presets in a directory of this test's own (the other tests keep their presets
    list), plus the test cluster's preset three times broken: `closedport` at a port nothing listens on,
    `otherkey` expecting another host key, `nologin` as a user the cluster does not know. Each has its
    own host or user: one process keeps one connection per host, user and port."""
    config = tmp_path / "config"
    shutil.copytree(os.environ["BRAAS_HPC_CONFIG_DIR"], config)
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(config))
    text = (config / "presets" / "testbed.toml").read_text()
    known_hosts = re.search(r'^known_hosts = "(.+)"$', text, re.M)
    assert known_hosts and 'name = "testbed"' in text and 'host = "127.0.0.1"' in text and "port = 2222" in text
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other_key = (tmp_path / "other.pub").read_text().split()[:2]
    (tmp_path / "known_hosts").write_text(f"[localhost]:2222 {' '.join(other_key)}\n")
    changes = {"closedport": [("port = 2222", f"port = {_closed_port()}")],
               "otherkey": [('host = "127.0.0.1"', 'host = "localhost"'),
                            (known_hosts.group(0), f'known_hosts = "{tmp_path / "known_hosts"}"')],
               "nologin": [('user = "braastb"', 'user = "nobody-here"')]}
    for name, replaced in changes.items():
        preset = text.replace('name = "testbed"', f'name = "{name}"')
        for old, new in replaced:
            assert old in preset, old
            preset = preset.replace(old, new)
        (config / "presets" / f"{name}.toml").write_text(preset)
    return list(changes)


def _submit(scene: Path, preset: str) -> str:
    done = run_cli("submit", str(scene), "--preset", preset, "--frames", "1", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["job"]


def test_one_cluster_down_hides_no_other_job(broken_presets: list[str], sample_scene: Path) -> None:
    good, local = _submit(sample_scene, "testbed"), _submit(sample_scene, "local")
    for job in (good, local):
        waited = run_cli("wait", job)
        assert waited.returncode == 0, waited.stderr
    # Jobs as the registry records them on a cluster that is down, and after their preset file was removed.
    spec, root = registry.get_job(good).spec, registry.get_job(good).remote_root
    closed, doomed = f"{good}-closed", f"{good}-doomed"
    for index, preset in enumerate(broken_presets):
        name = closed if preset == "closedport" else f"{good}-{preset}"
        registry.add_job(dataclasses.replace(spec, name=name, preset=preset), root, {str(4242 + index): 1}, "RUNNING")
    registry.add_job(dataclasses.replace(spec, name=doomed, preset="doomed"), root, {"4249": 1}, "COMPLETED")

    done = run_cli("status", "--json")

    assert done.returncode == 3, done.stderr
    entries = json.loads(done.stdout)["jobs"]
    assert [e["job"] for e in entries] == [good, local, closed, f"{good}-otherkey", f"{good}-nologin", doomed]
    for entry in entries[:2]:
        assert (entry["state"], entry["frames_done"], entry["error"]) == ("COMPLETED", 1, None), entry
    refused, other_key, no_login = entries[2:5]
    assert (refused["state"], refused["frames_done"], refused["frames_total"]) == ("UNKNOWN", None, 1)
    assert refused["error"]["kind"] == "connection"
    assert f"[Errno {errno.ECONNREFUSED}]" in refused["error"]["message"], refused  # the refusal, as the OS said it
    assert other_key["error"]["kind"] == "host_key" and "CHANGED" in other_key["error"]["message"], other_key
    assert no_login["error"]["kind"] == "authentication" and "refused the login" in no_login["error"]["message"]
    assert entries[5]["error"] == {"kind": "preset_missing", "message": (
        f"preset 'doomed' no longer exists: braas-hpc forget {doomed} (in Blender: Remove from List)")}

    text = run_cli("status", "--no-recover")
    assert text.returncode == 3, text.stderr
    lines = text.stdout.splitlines()
    assert lines[:2] == [f"{good}  testbed  COMPLETED  frames 1/1", f"{local}  local  COMPLETED  frames 1/1"]
    assert lines[2].startswith(f"closedport did not answer (connection) for {closed}: ")
    assert f"otherkey did not answer (host_key) for {good}-otherkey: " in text.stdout
    assert f"nologin did not answer (authentication) for {good}-nologin: " in text.stdout
    assert f"{doomed}: preset 'doomed' no longer exists" in text.stdout
    assert run_cli("status", good, local).returncode == 0  # only the named jobs' clusters are asked

    # Watching ends once the others have ended: waiting brings no preset back, nor fixes a host key or login.
    watched = run_cli("status", "--watch", good, doomed, f"{good}-otherkey", f"{good}-nologin")
    assert watched.returncode == 3, watched.stderr
    assert f"{good}  testbed  COMPLETED" in watched.stdout and "preset 'doomed' no longer exists" in watched.stdout
    assert "(host_key)" in watched.stdout and "(authentication)" in watched.stdout

    # forget: an ended job goes; one recorded running whose cluster cannot say otherwise stays unless forced.
    assert run_cli("forget", doomed).returncode == 0
    kept = run_cli("forget", closed)
    assert kept.returncode == 2
    assert f"job {closed} is RUNNING as far as braas-hpc knows: it may still be using the allocation" in kept.stderr
    assert "Cancel it first" in kept.stderr and "--force" in kept.stderr
    assert closed in [r.name for r in registry.list_jobs()]
    forced = run_cli("forget", closed, "--force")
    assert forced.returncode == 0, forced.stderr
    assert run_cli("forget", "--force", f"{good}-otherkey", f"{good}-nologin").returncode == 0
    after = run_cli("status", "--json")
    assert after.returncode == 0 and [e["job"] for e in json.loads(after.stdout)["jobs"]] == [good, local]
