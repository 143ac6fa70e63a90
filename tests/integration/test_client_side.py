"""The client does not share the cluster's disk (tests/client_side.py): the test process and everything it
starts see the cluster user's home empty, while SSH reaches it and the observer's view shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.client_side import cluster_path, on_cluster_host, separated
from tests.conftest import run_cli

pytestmark = pytest.mark.testbed


def test_the_cluster_home_is_not_on_the_clients_disk(testbed, remote) -> None:  # noqa: ANN001
    assert os.geteuid() == 0 and separated(), "integration tests must run as root, off the cluster's disk"
    home = os.path.dirname(testbed.workdir)
    assert os.listdir(home) == []  # this process
    child = subprocess.run([sys.executable, "-c", f"import os; print(os.listdir({home!r}))"], capture_output=True,
                           text=True, timeout=60)
    assert child.stdout.strip() == "[]", child.stderr  # what it starts: the CLI, ssh, Blender
    over_ssh = remote(f"ls -A {home}").stdout.split()
    assert "work" in over_ssh and ".ssh" in over_ssh  # only SSH reaches it
    assert sorted(os.listdir(cluster_path(home))) == sorted(over_ssh)  # the tests' window onto it
    on_host = subprocess.run(on_cluster_host(["ls", "-A", home]), capture_output=True, text=True, timeout=60)
    assert on_host.stdout.split() == over_ssh  # the cluster's side


def test_the_cli_works_only_through_ssh(testbed) -> None:  # noqa: ANN001
    """The same `test` a user runs first: every check passes with the cluster's files out of reach."""
    done = run_cli("test", "testbed", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    # It looks for the preset's scheduler's commands (Slurm's), and Blender.
    assert json.loads(done.stdout)["commands"] == ["sbatch", "squeue", "sacct", "blender"], done.stdout
