"""The test process as the user's own computer: the cluster's files are not on its disk.

On a real site the cluster user's home, its working directory, the store and every job live on another
machine; only SSH reaches them. Here client and cluster share one host, so once the test cluster is up
(`separate`, run once per session as root), this process moves into a mount namespace of its own where
the cluster user's home is an empty directory. Every process it starts inherits that: the pytest
workers, the CLI, ssh, the add-on in Blender. A bug that reads a cluster path on the client finds
nothing, as it would at a site. The way back and the observer's window are in the environment, so the
workers know them too.

The cluster side stays in the machine's own mount namespace, where the test cluster's daemons run.
What acts there on purpose goes through `on_cluster_host` (an admin restarting a daemon, another user
of the cluster); what a test reads to check a result goes through `cluster_path`, an observer's
window onto the cluster's disk that the code under test is never given.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from tests.testbed import testbed as tb

CLONE_NEWNS = 0x00020000
HOST_NAMESPACE_ENV = "BRAAS_TEST_HOST_MNT"  # nsenter's --mount= argument, once separated
VIEW_ENV = "BRAAS_TEST_CLUSTER_VIEW"  # "<the cluster user's home>:<where this process still sees it>"


def separated() -> bool:
    return HOST_NAMESPACE_ENV in os.environ


def separate(layout: tb.Layout) -> None:
    """Hide the cluster user's home from this process and its future children (see the module text).
    Must run while this process has a single thread: a mount namespace is per process."""
    if separated():
        return
    if threading.active_count() != 1:
        raise RuntimeError(f"cannot separate the client from the cluster: {threading.active_count()} threads run")
    # The machine's namespace stays reachable through this descriptor, for what must act on the cluster.
    host = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) for the client side")
    view = layout.base / "cluster-view"
    view.mkdir(exist_ok=True)
    for argv in (["mount", "--make-rslave", "/"],  # the host's mounts reach us, ours never reach it
                 ["mount", "--bind", str(layout.home), str(view)],
                 ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "braas-client-side", str(layout.home)]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"separating the client from the cluster: {' '.join(argv)}: {done.stderr.strip()}")
    os.environ[HOST_NAMESPACE_ENV] = f"/proc/{os.getpid()}/fd/{host}"
    os.environ[VIEW_ENV] = f"{layout.home}:{view}"


def cluster_path(path: str | os.PathLike[str]) -> Path:
    """Where the test (never the code under test) reads a file of the cluster user's home."""
    path = Path(path)
    if VIEW_ENV not in os.environ:
        return path
    home, view = map(Path, os.environ[VIEW_ENV].split(":", 1))
    return view / path.relative_to(home) if path.is_relative_to(home) else path


def on_cluster_host(argv: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
    """argv run in the cluster's mount namespace (as an admin or another user of the cluster would), in
    `cwd` (default: this process's own; entering a mount namespace would otherwise start it in /)."""
    if not separated():
        return list(argv)
    return ["nsenter", f"--mount={os.environ[HOST_NAMESPACE_ENV]}", f"--wd={cwd or os.getcwd()}", "--", *argv]
