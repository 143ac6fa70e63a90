"""One test cluster for a whole pytest run, and the run split over two processes around it.

The cluster's tests wait on it most of the time (jobs queue, SSH round trips), while the local tests
(unit, Blender) keep a processor busy: run side by side, the suite takes the time of the cluster's
tests alone. So a run that covers both goes over two pytest-xdist workers, the cluster's tests in one
(they share one cluster and must not disturb each other), everything else in the other
(`workers_for`, `group_items`). A run of one side only stays in one process.

Only the main process starts and stops the cluster: before any worker exists it brings the cluster up
and takes itself off the cluster's disk (tests/client_side.py) while it still has one thread; the
workers, and every client they start, inherit that view. What the cluster's tests need (the Testbed,
or the error that stopped it) reaches them through a file named in the environment (`state`).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests import client_side
from tests.testbed import testbed as tb

INTEGRATION = Path(__file__).resolve().parent / "integration"
TESTBED_CLI = Path(tb.__file__).with_name("testbed")
STATE_ENV = "BRAAS_TEST_CLUSTER_STATE"  # the pickled (user dirs, Testbed or TestbedError) of this run
USER_DIR_KEYS = ("BRAAS_HPC_CONFIG_DIR", "BRAAS_HPC_DATA_DIR")

_brought_up: list[Path] = []  # in the process that brought the cluster up: its state file


def _paths(config: pytest.Config) -> list[Path]:
    return [Path(config.invocation_params.dir, arg.split("::", 1)[0]).resolve() for arg in config.args]


def covers_cluster(config: pytest.Config) -> bool:
    """Whether the run's paths take in any of the cluster's tests (tests/integration, or a parent)."""
    return any(p.is_relative_to(INTEGRATION) or INTEGRATION.is_relative_to(p) for p in _paths(config))


def workers_for(config: pytest.Config) -> int:
    """Two workers when the run covers the cluster's tests and others, else none (one process)."""
    paths = _paths(config)
    local = any(not p.is_relative_to(INTEGRATION) for p in paths)
    return 2 if covers_cluster(config) and local else 0


# Tests of the cluster that run beside its serial group, in the other worker: nothing they do can break
# another test, nor can another test's doing break them. They use only the cluster's sshd (the one sshd
# restart of the suite is on a login node of its own: test_faults_cluster), or their own working
# directory and their own jobs, held by id, or Grid Engine (no other test uses it), or the shared store
# only as a user does (the tests that sweep or check a store use working directories of their own), with
# a few one-frame jobs at most. Not here: a test that closes a partition or crashes a node, wraps a
# scheduler command, counts calls in a shared log, holds a timing window, reads everything the cluster's
# home gets meanwhile (test_secrets), or moves hundreds of MB (test_addon_ui, test_cli_face). Logins with
# a one-time code, in either worker, are taken in turn (the `totp_turn` fixture).
BESIDE_THE_CLUSTER = frozenset({
    "test_transport_contract.py", "test_keeper_contract.py", "test_sshlab.py", "test_ssh_config_routes.py",
    "test_cli_trust.py", "test_keeper_trust.py", "test_paramiko_backend.py",  # the sshd only
    "test_openssh_backend.py", "test_keeper.py",  # the sshd (one-time codes among it); two one-frame jobs
    "test_install.py", "test_tree_attacks.py",  # working directories of their own; held jobs, released by id
    "test_gridengine.py", "test_gridengine_testbed.py",  # Grid Engine, in a working directory of their own
})


def group_items(items: list[pytest.Item]) -> None:
    """The cluster's tests in one xdist group (one worker, in order), all others in the other."""
    for item in items:
        path = Path(item.path)
        group = "cluster" if path.is_relative_to(INTEGRATION) and path.name not in BESIDE_THE_CLUSTER else "local"
        item.add_marker(pytest.mark.xdist_group(group))


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_distributed(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("dsession")


def bring_up(config: pytest.Config) -> None:
    """Start the cluster (or keep the error that stopped it: every test that needs it errors with it,
    so CI goes red, never skips), then separate this process from the cluster's disk."""
    if _brought_up or STATE_ENV in os.environ:
        return
    dirs = config._tmp_path_factory.mktemp("testbed-user")  # noqa: SLF001 - pytest's own factory
    saved = {key: os.environ.get(key) for key in USER_DIR_KEYS}
    os.environ["BRAAS_HPC_CONFIG_DIR"] = str(dirs / "config")  # where `up` writes the `testbed` preset
    try:
        bed: tb.Testbed | tb.TestbedError = tb.up()
        if os.geteuid() == 0:
            client_side.separate(tb.Layout.from_env())
    except tb.TestbedError as error:
        bed = error
    finally:
        restore(saved)
    state_file = dirs / "state.pickle"
    state_file.write_bytes(pickle.dumps((dirs, bed)))
    os.environ[STATE_ENV] = str(state_file)  # read by the `testbed` fixture, here and in the workers
    _brought_up.append(state_file)


def state() -> tuple[Path, tb.Testbed | tb.TestbedError]:
    """This run's user dirs for the cluster's tests and its Testbed (or why it did not start)."""
    path = os.environ.get(STATE_ENV)
    if not path:
        raise tb.TestbedError("the test cluster was not brought up for this run (tests/cluster_session.py)")
    return pickle.loads(Path(path).read_bytes())  # noqa: S301 - written by this run's main process


def take_down(session: pytest.Session) -> None:
    """Stop the cluster this process brought up, unless BRAAS_TESTBED_KEEP; a failure fails the run."""
    if not _brought_up or os.environ.get("BRAAS_TESTBED_KEEP"):
        return
    # In the cluster's own mount namespace: its network namespaces and files are mounted there.
    down = subprocess.run(client_side.on_cluster_host([sys.executable, str(TESTBED_CLI), "down"]),
                          capture_output=True, text=True, timeout=600)
    if down.returncode != 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "the test cluster did not stop", red=True)
            reporter.write_line(down.stdout + down.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
