"""The compute node's own network namespace: slurmd (and so every job step) runs in it.

The login side (the root namespace, where the cluster's sshd listens) reaches the node at
NODE_ADDR over a veth pair; the SSH lab's `braas-login` namespace has no route to it. So a port a
job opens on the node is reachable only through the login host, as on a real cluster, and an SSH
tunnel to it really crosses from the login host to the node.

The node has its own host name (UTS namespace), resolved on the login side by one marked line in
/etc/hosts (the only other file this testbed writes under /etc; `down` removes it).
"""

from __future__ import annotations

import os
from pathlib import Path

if __package__:
    from . import testbed as tb
    from .sshlab import _ip, _link_exists, ensure_veth_netns
else:  # imported as plain `nodens`, beside plain `testbed` (the command-line script)
    import testbed as tb
    from sshlab import _ip, _link_exists, ensure_veth_netns

NETNS = "braas-node"
NETNS_PATH = Path("/run/netns") / NETNS
VETH_ROOT = "braas-nveth0"
VETH_NODE = "braas-nveth1"
ROOT_ADDR = "198.18.1.1"  # the login side's address towards the node (slurmctld is reached here)
NODE_ADDR = "198.18.1.2"
PREFIX_LEN = 30
HOSTNAME = "braas-node"
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# braas-testbed compute node"


def ensure() -> None:
    """Namespace, veth pair, addresses, a default route to the login side and the hosts line.

    Every step is idempotent, so a half-built namespace is repaired.
    """
    ensure_veth_netns(NETNS, VETH_ROOT, VETH_NODE, ROOT_ADDR, NODE_ADDR, PREFIX_LEN)
    # Replies to the login side's other addresses (e.g. where srun listens) go back over the veth.
    _ip("-n", NETNS, "route", "replace", "default", "via", ROOT_ADDR)
    _ensure_hosts_line()


def remove() -> None:
    """Delete the namespace, the root-side veth (if the namespace outlived the delete) and the hosts line."""
    if NETNS_PATH.exists():
        left = _ip("netns", "pids", NETNS, check=False).stdout.split()
        if left:
            tb._say(f"processes still in namespace {NETNS}: {' '.join(left)}")
        _ip("netns", "del", NETNS)
    # Deleting the namespace takes its veth pair along, but not always at once: wait a moment, then
    # delete what outlived it (a process still in the namespace keeps it alive).
    if not tb._wait_for(lambda: not _link_exists(VETH_ROOT), 5.0, 0.2):
        _ip("link", "del", VETH_ROOT, check=False)
        if _link_exists(VETH_ROOT):
            raise tb.TestbedError(f"cannot delete {VETH_ROOT}: {_ip('link', 'show', VETH_ROOT, check=False).stdout}")
    _remove_hosts_line()


def _hosts_lines() -> list[str]:
    return HOSTS_FILE.read_text().splitlines() if HOSTS_FILE.exists() else []


def _write_hosts(lines: list[str]) -> None:
    # In place (not temp + rename): in containers /etc/hosts is often a bind mount.
    with HOSTS_FILE.open("w") as out:
        out.write("".join(f"{line}\n" for line in lines))


def _ensure_hosts_line() -> None:
    want = f"{NODE_ADDR} {HOSTNAME} {HOSTS_MARK}"
    lines = _hosts_lines()
    if want in lines:
        return
    _write_hosts([line for line in lines if not line.endswith(HOSTS_MARK)] + [want])


def _remove_hosts_line() -> None:
    lines = _hosts_lines()
    kept = [line for line in lines if not line.endswith(HOSTS_MARK)]
    if kept != lines:
        _write_hosts(kept)


def in_netns(cmd: list[str]) -> list[str]:
    """`cmd` run inside the node's namespace with the node's host name.

    nsenter, not `ip netns exec`: the latter remounts /sys and slurmd then finds no cgroup mount.
    nsenter, unshare and sh all exec, so the spawned pid is the daemon's.
    """
    return ["nsenter", f"--net={NETNS_PATH}", "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
            HOSTNAME, *cmd]


def runs_here(pid: int) -> bool:
    """True when the process is in the node's namespace (not the root one, not an orphaned one)."""
    try:
        mine, node = os.stat(f"/proc/{pid}/ns/net"), os.stat(NETNS_PATH)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (node.st_dev, node.st_ino)


def port_taken(port: int) -> bool:
    proc = tb._run(["nsenter", f"--net={NETNS_PATH}", "ss", "-ltnH", f"sport = :{port}"], check=False, timeout=10)
    return bool(proc.stdout.strip())


def listening(pid: int) -> list[str]:
    proc = tb._run(["nsenter", f"--net={NETNS_PATH}", "ss", "-ltnpH"], check=False, timeout=10)
    found = {line.split()[3] for line in proc.stdout.splitlines() if f"pid={pid}," in line}
    return sorted(f"{NETNS}:{addr}" for addr in found)


def status_line() -> tuple[bool, str]:
    present = NETNS_PATH.exists() and _link_exists(VETH_ROOT)
    resolved = any(line.endswith(HOSTS_MARK) for line in _hosts_lines())
    text = (f"{'node-ns':10} {'present' if present else 'absent':8} {NETNS}, {VETH_ROOT} {ROOT_ADDR} <-> "
            f"{NODE_ADDR} ({HOSTNAME}{'' if resolved else ', not in /etc/hosts'})")
    return present and resolved, text
