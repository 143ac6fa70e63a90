"""The real test cluster for integration tests: brought up once per session.

There is no skip: when the cluster cannot start, every test that needs it errors with the daemon's
name and log tail, so CI goes red.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import client_side
from tests.testbed import testbed as tb

TESTBED_CLI = Path(tb.__file__).with_name("testbed")


_up = pytest.StashKey[tuple[Path, "tb.Testbed | tb.TestbedError"]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Bring the test cluster up before the first test, while this process still has one thread, then
    take this process (and so every client it starts) off the cluster's disk (tests/client_side.py)."""
    if session.config.option.collectonly or not any("testbed" in getattr(item, "fixturenames", ())
                                                    for item in session.items):
        return
    dirs = session.config._tmp_path_factory.mktemp("testbed-user")  # noqa: SLF001 - pytest's own factory
    saved = {k: os.environ.get(k) for k in ("BRAAS_HPC_CONFIG_DIR", "BRAAS_HPC_DATA_DIR")}
    os.environ["BRAAS_HPC_CONFIG_DIR"] = str(dirs / "config")  # where `up` writes the `testbed` preset
    try:
        bed: tb.Testbed | tb.TestbedError = tb.up()
        if os.geteuid() == 0:
            client_side.separate(tb.Layout.from_env())
    except tb.TestbedError as error:  # every test that needs the cluster errors with it: no skip
        bed = error
    finally:
        _restore(saved)
    session.config.stash[_up] = (dirs, bed)


@pytest.fixture(scope="session")
def testbed(pytestconfig: pytest.Config) -> Iterator[tb.Testbed]:
    dirs, bed = pytestconfig.stash[_up]
    if isinstance(bed, tb.TestbedError):
        raise bed
    saved = {k: os.environ.get(k) for k in ("BRAAS_HPC_CONFIG_DIR", "BRAAS_HPC_DATA_DIR")}
    os.environ["BRAAS_HPC_CONFIG_DIR"] = str(dirs / "config")
    os.environ["BRAAS_HPC_DATA_DIR"] = str(dirs / "data")
    try:
        yield bed
    finally:
        if not os.environ.get("BRAAS_TESTBED_KEEP"):
            # In the cluster's own mount namespace: its network namespaces and files are mounted there.
            down = subprocess.run(client_side.on_cluster_host([sys.executable, str(TESTBED_CLI), "down"]),
                                  capture_output=True, text=True, timeout=600)
            assert down.returncode == 0, down.stdout + down.stderr
        _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def remote(testbed: tb.Testbed):  # noqa: ANN201 - returns a small callable
    """Run a shell command on the cluster as its user, over real OpenSSH with the pinned host key."""
    layout = tb.Layout.from_env()

    def run(command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(tb.ssh_command(layout, command), capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def workdir(testbed: tb.Testbed) -> Path:
    """The cluster's working directory as the test sees it to check results (client_side.cluster_path)."""
    return client_side.cluster_path(testbed.workdir)


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
