"""A second Unix user for the interactive tests: someone else on the same workstation, login node or
compute node, who tries to reach another user's tunnel socket or render server.

The account is the tests' own (`braasiu2`, made like the testbed's user with useradd, no home, no login
shell): created when missing and removed afterwards, unless it was there before. Its code runs with the
system Python (root's pyenv is not readable by others), standard library only, optionally inside a
network namespace (the test cluster's compute node).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from tests.client_side import on_cluster_host
from tests.helpers import temporary_user

STRANGER = "braasiu2"
PYTHON = "/usr/bin/python3"


def stranger_user() -> AbstractContextManager[str]:
    return temporary_user(STRANGER)


def as_stranger(code: str, *args: str, netns: str | None = None) -> list[str]:
    """argv that runs `code` as the stranger (in the network namespace `netns`, when given)."""
    argv = ["runuser", "-u", STRANGER, "--", PYTHON, "-c", code, *args]
    # On a compute node the stranger is on the cluster's side, with its disk (tests/client_side.py).
    return on_cluster_host(["nsenter", f"--net=/run/netns/{netns}", *argv]) if netns else argv
