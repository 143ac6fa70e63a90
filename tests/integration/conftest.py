"""The real test cluster for integration tests: brought up once per run (tests/cluster_session.py).

There is no skip: when the cluster cannot start, every test that needs it errors with the daemon's
name and log tail, so CI goes red.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from braas_hpc.core.transport import Transport
from braas_hpc.core.transport.keeper import link as keeper_link
from braas_hpc.core.transport.keeper import sockets
from tests import client_side, cluster_session
from tests.testbed import testbed as tb


@pytest.fixture(scope="session")
def testbed() -> Iterator[tb.Testbed]:
    """The cluster this run brought up (tests/cluster_session.py), with the user dirs its preset is in."""
    dirs, bed = cluster_session.state()
    if isinstance(bed, tb.TestbedError):
        raise bed
    saved = {key: os.environ.get(key) for key in cluster_session.USER_DIR_KEYS}
    os.environ["BRAAS_HPC_CONFIG_DIR"] = str(dirs / "config")
    os.environ["BRAAS_HPC_DATA_DIR"] = str(dirs / "data")
    try:
        yield bed
    finally:
        cluster_session.restore(saved)


@pytest.fixture
def remote(testbed: tb.Testbed):  # noqa: ANN201 - returns a small callable
    """Run a shell command on the cluster as its user, over real OpenSSH with the pinned host key."""
    layout = tb.Layout.from_env()

    def run(command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(tb.ssh_command(layout, command), capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def own_workdir(testbed: tb.Testbed, remote) -> Callable[[str], str]:  # noqa: ANN001
    """Makes a preset like `testbed` with a working directory of its own (its own store, scripts and jobs),
    named `<prefix>-<random>`: for a test that sweeps or checks a store, or installs from scratch, so that
    no other test's uploads meet it (tests/cluster_session.py)."""
    from braas_hpc.core.presets import load_preset
    from tests.retarget import to_toml

    def make(prefix: str) -> str:
        base = load_preset("testbed")
        name = f"{prefix}-{secrets.token_hex(3)}"
        workdir = f"{base.workdir}/{name}"
        assert remote(f"mkdir -p {workdir}").returncode == 0
        (Path(base.source).parent / f"{name}.toml").write_text(
            to_toml(dataclasses.replace(base, name=name, workdir=workdir)))
        return name

    return make


@pytest.fixture
def totp_turn() -> Iterator[None]:
    """The one-time-code sshd to this test alone while it runs: a test of the other worker that logs in
    there waits its turn (tests/cluster_session.py). pam_oath takes each code's 30-s step once and in
    order, so two tests' logins at once can refuse each other; and test_keeper counts that sshd's logins."""
    with open(Path(tempfile.gettempdir()) / "braas-tests-totp-turn.lock", "a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        yield


@pytest.fixture
def workdir(testbed: tb.Testbed) -> Path:
    """The cluster's working directory as the test sees it to check results (client_side.cluster_path)."""
    return client_side.cluster_path(testbed.workdir)


def stop_keeper() -> None:
    with contextlib.suppress(sockets.KeeperUnavailable):
        asyncio.run(keeper_link.ask_keeper("stop"))


@pytest.fixture
def keeper(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The connection keeper on (the suite runs without), in a short private directory of the test's own (a
    socket path has ~100 bytes); stopped at the end, with the connections it kept."""
    directory = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))
    monkeypatch.setenv("BRAAS_HPC_KEEPER", "on")
    monkeypatch.setenv("BRAAS_HPC_KEEPER_DIR", str(directory))
    try:
        yield directory
    finally:
        stop_keeper()
        deadline = time.monotonic() + 15
        while (directory / sockets.SOCKET_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(directory, ignore_errors=True)


def no_direct() -> Transport:
    """The direct factory of a KeptTransport in tests of the kept path: falling back fails the test."""
    raise AssertionError("the kept transport fell back to a direct connection")


@pytest.fixture(autouse=True)
def own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own job registry and downloads ledger (the presets stay the session's)."""
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))


# What the cluster did during a failed test, in its report: a flake seen only in CI must be
# explainable from the CI log (the test cluster there is gone afterwards).
_DIAGNOSE_LINES = 25
_started = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    import time

    item.stash[_started] = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "testbed" in getattr(item, "fixturenames", ()):
        report.sections.append(("cluster during this test", _cluster_diagnosis(item.stash.get(_started, 0.0))))


def _tail(path: Path, lines: int = _DIAGNOSE_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({error})"


def _cluster_diagnosis(since: float) -> str:
    """Task logs and markers of the jobs touched since `since`, and the controller's log tail."""
    layout = tb.Layout.from_env()
    parts: list[str] = []
    jobs = client_side.cluster_path(layout.workdir / f"braas-hpc-{layout.user}" / "jobs")  # per user (core.tree)
    for job in sorted(jobs.glob("*")) if jobs.is_dir() else []:
        if job.stat().st_mtime < since - 1:
            continue
        for path in sorted([*job.glob("log/*.log"), *job.glob("log/*.out"), *job.glob("status/*.json")]):
            if path.stat().st_mtime >= since - 1:
                parts.append(f"== {path.relative_to(jobs)}\n{_tail(path)}")
    parts.append(f"== slurmctld.log\n{_tail(layout.log('slurmctld'), 40)}")
    return "\n".join(parts)
