"""The compute nodes' own network namespaces: each node's slurmd (and so every job step) runs in one.

The login side (the root namespace, where the cluster's sshd listens) reaches a node at its
`node_addr` over a veth pair; the SSH lab's `braas-login` namespace has no route to it. So a port a
job opens on a node is reachable only through the login host, as on a real cluster, and an SSH
tunnel to it really crosses from the login host to the node.

Each node has its own host name (UTS namespace), resolved on the login side by one marked line in
/etc/hosts (the only other file this testbed writes under /etc; `down` removes it).

`NODES[0]` is the node every partition has (Slurm name `localhost`); `NODES[1]` (`node2`) is only in
the partition `qpair`, for tests that need a second node. The module-level names (NETNS, NODE_ADDR,
HOSTNAME, ...) are the first node's, as before there were two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from . import testbed as tb
    from .sshlab import _ip, _link_exists, ensure_veth_netns
else:  # imported as plain `nodens`, beside plain `testbed` (the command-line script)
    import testbed as tb
    from sshlab import _ip, _link_exists, ensure_veth_netns

HOSTS_FILE = Path("/etc/hosts")
PREFIX_LEN = 30


@dataclass(frozen=True)
class Node:
    """One compute node: its namespace, the veth pair to the login side, its names."""

    netns: str
    veth_root: str
    veth_node: str
    root_addr: str  # the login side's end of the veth (the first node's is where slurmctld is reached)
    node_addr: str  # slurm.conf's NodeAddr
    hostname: str  # what `hostname` prints in a job
    slurm_name: str  # slurm.conf's NodeName, what SLURMD_NODENAME and `--exclude` say
    hosts_mark: str  # ends its /etc/hosts line; no mark may end with another one

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def label(self) -> str:
        """Its name in `testbed status`: node-ns, node2-ns."""
        return f"{self.netns.removeprefix('braas-')}-ns"

    def ensure(self) -> None:
        """Namespace, veth pair, addresses, a default route to the login side and the hosts line.

        Every step is idempotent, so a half-built namespace is repaired.
        """
        ensure_veth_netns(self.netns, self.veth_root, self.veth_node, self.root_addr, self.node_addr, PREFIX_LEN)
        # Replies to the login side's other addresses (slurmctld's, where srun listens) go back over the veth.
        _ip("-n", self.netns, "route", "replace", "default", "via", self.root_addr)
        self._ensure_hosts_line()

    def remove(self) -> None:
        """Delete the namespace, the root-side veth (if the namespace outlived the delete) and the hosts line."""
        if self.netns_path.exists():
            left = _ip("netns", "pids", self.netns, check=False).stdout.split()
            if left:
                tb._say(f"processes still in namespace {self.netns}: {' '.join(left)}")
            _ip("netns", "del", self.netns)
        # Deleting the namespace takes its veth pair along, but not always at once: wait a moment, then
        # delete what outlived it (a process still in the namespace keeps it alive).
        if not tb._wait_for(lambda: not _link_exists(self.veth_root), 5.0, 0.2):
            _ip("link", "del", self.veth_root, check=False)
            if _link_exists(self.veth_root):
                raise tb.TestbedError(
                    f"cannot delete {self.veth_root}: {_ip('link', 'show', self.veth_root, check=False).stdout}")
        self._remove_hosts_line()

    def _ensure_hosts_line(self) -> None:
        want = f"{self.node_addr} {self.hostname} {self.hosts_mark}"
        lines = _hosts_lines()
        if want in lines:
            return
        _write_hosts([line for line in lines if not line.endswith(self.hosts_mark)] + [want])

    def _remove_hosts_line(self) -> None:
        lines = _hosts_lines()
        kept = [line for line in lines if not line.endswith(self.hosts_mark)]
        if kept != lines:
            _write_hosts(kept)

    def in_netns(self, cmd: list[str]) -> list[str]:
        """`cmd` run inside the node's namespace with the node's host name.

        nsenter, not `ip netns exec`: the latter remounts /sys and slurmd then finds no cgroup mount.
        nsenter, unshare and sh all exec, so the spawned pid is the daemon's.
        """
        return ["nsenter", f"--net={self.netns_path}", "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                self.hostname, *cmd]

    def runs_here(self, pid: int) -> bool:
        """True when the process is in this node's namespace (not the root one, another node's, an orphaned one)."""
        try:
            mine, node = os.stat(f"/proc/{pid}/ns/net"), os.stat(self.netns_path)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (node.st_dev, node.st_ino)

    def port_taken(self, port: int) -> bool:
        proc = tb._run(["nsenter", f"--net={self.netns_path}", "ss", "-ltnH", f"sport = :{port}"], check=False,
                       timeout=10)
        return bool(proc.stdout.strip())

    def listening(self, pid: int) -> list[str]:
        if not self.netns_path.exists():
            return []
        proc = tb._run(["nsenter", f"--net={self.netns_path}", "ss", "-ltnpH"], check=False, timeout=10)
        found = {line.split()[3] for line in proc.stdout.splitlines() if f"pid={pid}," in line}
        return sorted(f"{self.netns}:{addr}" for addr in found)

    def status_line(self) -> tuple[bool, str]:
        present = self.netns_path.exists() and _link_exists(self.veth_root)
        resolved = any(line.endswith(self.hosts_mark) for line in _hosts_lines())
        text = (f"{self.label:10} {'present' if present else 'absent':8} {self.netns}, {self.veth_root} "
                f"{self.root_addr} <-> {self.node_addr} ({self.hostname} = Slurm {self.slurm_name}"
                f"{'' if resolved else ', not in /etc/hosts'})")
        return present and resolved, text


NODES = (
    Node("braas-node", "braas-nveth0", "braas-nveth1", "198.18.1.1", "198.18.1.2", "braas-node", "localhost",
         "# braas-testbed compute node"),
    Node("braas-node2", "braas-n2veth0", "braas-n2veth1", "198.18.1.5", "198.18.1.6", "braas-node2", "node2",
         "# braas-testbed compute node2"),
)

# The first node under the names it had when it was the only one (tests use them).
NETNS = NODES[0].netns
NETNS_PATH = NODES[0].netns_path
VETH_ROOT = NODES[0].veth_root
VETH_NODE = NODES[0].veth_node
ROOT_ADDR = NODES[0].root_addr  # slurm.conf's SlurmctldHost address; every node reaches it over its own veth
NODE_ADDR = NODES[0].node_addr
HOSTNAME = NODES[0].hostname
HOSTS_MARK = NODES[0].hosts_mark


def ensure() -> None:
    """Every node's namespace (see Node.ensure)."""
    for node in NODES:
        node.ensure()


def remove() -> None:
    for node in NODES:
        node.remove()


def _hosts_lines() -> list[str]:
    return HOSTS_FILE.read_text().splitlines() if HOSTS_FILE.exists() else []


def _write_hosts(lines: list[str]) -> None:
    # In place (not temp + rename): in containers /etc/hosts is often a bind mount.
    with HOSTS_FILE.open("w") as out:
        out.write("".join(f"{line}\n" for line in lines))


def listening(pid: int) -> list[str]:
    """Where a process listens in any node's namespace."""
    return [addr for node in NODES for addr in node.listening(pid)]


def status_lines() -> tuple[bool, list[str]]:
    lines = [node.status_line() for node in NODES]
    return all(ok for ok, _ in lines), [text for _, text in lines]
