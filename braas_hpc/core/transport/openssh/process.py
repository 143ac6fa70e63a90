"""Local processes of the OpenSSH back end (ssh, ssh -O, ssh -G, ssh-keyscan) and the places they use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from ...errors import ConnectionFailed

WINDOWS = sys.platform == "win32"
LOCAL_TIMEOUT = 30.0  # for local helpers: ssh -O, ssh -G, ssh-keyscan


async def reap(process: asyncio.subprocess.Process, group: bool = False) -> None:
    """End a local process we started (on error or cancel) without leaving a zombie."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            if group and not WINDOWS:
                os.killpg(process.pid, signal.SIGTERM)  # its ProxyCommand children too
            else:
                process.kill()
    with contextlib.suppress(Exception):
        await asyncio.shield(asyncio.wait_for(process.wait(), 10))


async def run_local(argv: Sequence[str], env: dict[str, str], timeout: float = LOCAL_TIMEOUT
                    ) -> tuple[int | None, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        await reap(process)
        raise
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def private_dir() -> Path:
    """/tmp/braas-ssh-UID, mode 0700: short (unix socket paths are limited to ~104 bytes) and ours alone."""
    path = Path(f"/tmp/braas-ssh-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # whatever the umask
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConnectionFailed(f"{path} must be a directory of this user with mode 0700 (it holds the ssh control "
                               "sockets); remove it and try again")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
