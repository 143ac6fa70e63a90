"""What `presets` and the panel say of a preset from this computer alone (core/readiness.local_checks)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from braas_hpc.core.presets import load_preset
from braas_hpc.core.readiness import local_checks

KEY = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + os.urandom(32)).decode()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "config" / "presets").mkdir(parents=True)
    return tmp_path


def _preset(config: Path, host: str) -> None:
    (config / "config" / "presets" / "alias.toml").write_text(f"""
name = "alias"
scheduler = "slurm"
host = "{host}"
user = "me"
workdir = "/scratch/me"
partition_cpu = "cpu"
known_hosts = "{config / 'known_hosts'}"
ssh_config = "{config / 'ssh_config'}"
""")


def _host_key(name: str) -> object:
    return next(c for c in local_checks(load_preset(name)) if c.what == "host key")


def test_the_host_key_is_looked_up_where_the_ssh_config_sends_the_connection(config: Path) -> None:
    """The preset names an alias of the user's ssh config: its key is recorded under the real host and
    port (as every back end looks it up), so the preset is ready, not "host key unknown"."""
    (config / "ssh_config").write_text("Host mycluster\n  HostName 192.0.2.10\n  Port 2201\n")
    (config / "known_hosts").write_text(f"[192.0.2.10]:2201 ssh-ed25519 {KEY}\n")
    _preset(config, "mycluster")
    check = _host_key("alias")
    assert check.ok is True, check

    (config / "known_hosts").write_text(f"mycluster ssh-ed25519 {KEY}\n")  # recorded under the alias: not used
    check = _host_key("alias")
    assert check.ok is False and "mycluster (192.0.2.10) is not in" in check.found, check
