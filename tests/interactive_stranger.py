"""A second Unix user for the interactive tests: someone else on the same workstation, login node or
compute node, who tries to reach another user's tunnel socket or render server.

The account is the tests' own (`braasiu2`, made like the testbed's user with useradd, no home, no login
shell): created when missing and removed afterwards, unless it was there before. Its code runs with the
system Python (root's pyenv is not readable by others), standard library only, optionally inside a
network namespace (the test cluster's compute node).
"""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

STRANGER = "braasiu2"
PYTHON = "/usr/bin/python3"


@contextmanager
def stranger_user() -> Iterator[str]:
    try:
        pwd.getpwnam(STRANGER)
        created = False
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                        STRANGER], check=True, capture_output=True)
        created = True
    try:
        yield STRANGER
    finally:
        if created:
            subprocess.run(["userdel", STRANGER], check=False, capture_output=True)


def as_stranger(code: str, *args: str, netns: str | None = None) -> list[str]:
    """argv that runs `code` as the stranger (in the network namespace `netns`, when given)."""
    argv = ["runuser", "-u", STRANGER, "--", PYTHON, "-c", code, *args]
    return (["nsenter", f"--net=/run/netns/{netns}"] if netns else []) + argv
