"""The real test cluster for integration tests: brought up once per session.

There is no skip: when the cluster cannot start, every test that needs it errors with the daemon's
name and log tail, so CI goes red.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed import testbed as tb


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tb.Testbed]:
    dirs = tmp_path_factory.mktemp("testbed-user")
    saved = {k: os.environ.get(k) for k in ("BRAAS_HPC_CONFIG_DIR", "BRAAS_HPC_DATA_DIR")}
    os.environ["BRAAS_HPC_CONFIG_DIR"] = str(dirs / "config")
    os.environ["BRAAS_HPC_DATA_DIR"] = str(dirs / "data")
    try:
        yield tb.up()  # writes the `testbed` preset into the config dir above
    finally:
        if not os.environ.get("BRAAS_TESTBED_KEEP"):
            tb.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def remote(testbed: tb.Testbed):  # noqa: ANN201 - returns a small callable
    """Run a shell command on the cluster as its user, over real OpenSSH with the pinned host key."""
    import subprocess

    layout = tb.Layout.from_env()

    def run(command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(tb.ssh_command(layout, command), capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def workdir(testbed: tb.Testbed) -> Path:
    return Path(testbed.workdir)


@pytest.fixture(autouse=True)
def own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own job registry and downloads ledger (the presets stay the session's)."""
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))
