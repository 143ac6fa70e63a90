from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cluster_session
from tests.helpers import REPO, bpy_site, make_sample


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject.toml): two workers when the run has the cluster's tests and others, else one
    process (tests/cluster_session.py)."""
    return cluster_session.workers_for(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Before xdist starts its workers (its own sessionstart runs last): they inherit the cluster's state.
    config = session.config
    if cluster_session.is_distributed(config) and cluster_session.covers_cluster(config):
        cluster_session.bring_up(config)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cluster_session.group_items(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """In a run of one process: the cluster comes up only when a selected test needs it, before the first
    test, while this process still has one thread."""
    config = session.config
    if cluster_session.is_worker(config) or cluster_session.is_distributed(config) or config.option.collectonly:
        return
    if any("testbed" in getattr(item, "fixturenames", ()) for item in session.items):
        cluster_session.bring_up(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    cluster_session.take_down(session)


@pytest.fixture(scope="session", autouse=True)
def test_environment() -> Iterator[None]:
    """What every test runs in: nothing of the machine's own SSH set-up (an agent of the user running
    the suite would offer its keys), `wait`/`status --watch` polling every 2 s rather than backing
    off to 30 s (the back-off itself: tests/unit/test_monitor.py), and direct connections: a kept one
    would outlive the test in a keeper process, and what a test cuts would be the keeper's connection.
    The keeper's own tests (tests/integration/test_keeper.py, tests/unit/test_keeper.py) turn it on. The
    cluster's job watcher is off too (with 2 s polls it adds little and a stream more to every `wait`);
    tests/integration/test_events.py turns it on."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SSH_AUTH_SOCK", raising=False)
        patch.setenv("BRAAS_HPC_POLL_MAX", "2")
        patch.setenv("BRAAS_HPC_KEEPER", "off")
        patch.setenv("BRAAS_HPC_EVENTS", "off")
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
