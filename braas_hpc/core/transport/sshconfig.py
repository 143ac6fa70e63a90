"""One reading of ~/.ssh/config for the Python back ends (asyncssh, paramiko), so both resolve
Host aliases, HostName, User, Port, IdentityFile and ProxyJump the same way. The system OpenSSH back
end lets `ssh` read the file itself. Explicit preset values always win over the file.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ..errors import PresetError
from .base import SSHTarget

DEFAULT_CONFIG = "~/.ssh/config"
MAX_JUMPS = 8


@dataclass(frozen=True)
class Hop:
    """One SSH server to connect to, fully resolved."""

    alias: str  # what the user wrote
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    known_hosts: str | None = None  # UserKnownHostsFile from the config; the target's setting wins


def _load(target: SSHTarget) -> paramiko.SSHConfig:
    if target.ssh_config == "none":
        return paramiko.SSHConfig()
    path = Path(target.ssh_config or DEFAULT_CONFIG).expanduser()
    if not path.is_file():
        if target.ssh_config:
            raise PresetError(f"ssh config file not found: {path}")
        return paramiko.SSHConfig()
    return paramiko.SSHConfig.from_path(str(path))


def _split_jump(spec: str) -> tuple[str, str | None, int | None]:
    """'user@host:port' -> (host, user, port); IPv6 in brackets allowed."""
    user, _, hostport = spec.rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    return host, user or None, int(port) if port else None


def _hop(config: paramiko.SSHConfig, alias: str, user: str | None, port: int | None,
         keys: tuple[str, ...]) -> tuple[Hop, str | None]:
    found = config.lookup(alias)
    hop = Hop(
        alias=alias,
        hostname=found.get("hostname", alias),
        port=port or int(found.get("port", 22)),
        user=user or found.get("user") or getpass.getuser(),
        key_files=keys or tuple(found.get("identityfile", [])),
        known_hosts=(found.get("userknownhostsfile") or "").split(" ")[0] or None,
    )
    jump = found.get("proxyjump")
    return hop, (None if jump in (None, "none") else jump)


def resolve(target: SSHTarget) -> list[Hop]:
    """The chain of servers to go through: jump hosts first, the target last."""
    config = _load(target)
    keys = tuple(str(Path(k).expanduser()) for k in target.key_files)
    final, jump = _hop(config, target.host, target.user, target.port, keys)
    jump = target.proxy_jump or jump
    chain: list[Hop] = []
    while jump:
        # ProxyJump "a,b": connect to a, then through it to b, then to the target.
        hops = []
        for spec in jump.split(","):
            host, user, port = _split_jump(spec.strip())
            hop, _ = _hop(config, host, user, port, ())
            hops.append(hop)
        chain = hops + chain
        first = config.lookup(hops[0].alias).get("proxyjump")
        jump = None if first in (None, "none") else first
        if len(chain) > MAX_JUMPS:
            raise PresetError(f"ProxyJump chain for {target.host} is longer than {MAX_JUMPS} hops (a loop?)")
    return [*chain, final]
