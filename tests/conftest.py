from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, bpy_site, make_sample


@pytest.fixture(scope="session", autouse=True)
def test_environment() -> Iterator[None]:
    """What every test runs in: nothing of the machine's own SSH set-up (an agent of the user running
    the suite would offer its keys), and `wait`/`status --watch` polling every 2 s rather than backing
    off to 30 s (the back-off itself: tests/unit/test_monitor.py)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SSH_AUTH_SOCK", raising=False)
        patch.setenv("BRAAS_HPC_POLL_MAX", "2")
        yield


@pytest.fixture
def user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private config and data directory, so tests never touch the user's real ones."""
    env = {"BRAAS_HPC_CONFIG_DIR": str(tmp_path / "config"), "BRAAS_HPC_DATA_DIR": str(tmp_path / "data")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def sample_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample(tmp_path_factory.mktemp("sample"))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real command line in a subprocess, with this process's environment (and its user dirs)."""
    return subprocess.run([sys.executable, "-m", "braas_hpc.cli", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


@pytest.fixture
def cli() -> Iterator[object]:
    yield run_cli


@pytest.fixture(params=["", "5.0.1"], ids=["bpy-4.5", "bpy-5.0"])
def bpy_path(request: pytest.FixtureRequest) -> str:
    """Blender 4.5 (this Python's bpy, "") or 5.0 (the directory of its bpy, for PYTHONPATH)."""
    return bpy_site(request.param)
