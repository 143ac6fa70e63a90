"""One reading of ~/.ssh/config for the Python back ends (asyncssh, paramiko), the one OpenSSH makes.

Where the `ssh` client is installed it is asked (`ssh -G`), so Include, Match and every rule are
OpenSSH's own; elsewhere sshconfig_rules follows the same rules. The system OpenSSH back end lets
`ssh` read the file itself. Explicit preset values always win over the file. An option that changes
where or how we connect and that a back end cannot honour is refused with its name, never dropped.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import PresetError
from .base import SSHTarget
from .sshconfig_rules import DEFAULT_IDENTITIES, MULTI, expand_tokens, home, resolve_rules

DEFAULT_CONFIG = "~/.ssh/config"
MAX_JUMPS = 8
SSH_G_TIMEOUT_S = 15.0
# Options that change where or how we connect, which the Python back ends do not implement.
NOT_SUPPORTED = {
    "hostkeyalias": "the host key would be looked up under another name",
    "proxyusefdpass": "the proxy would hand over a connected socket",
    "pkcs11provider": "keys on a smart card (PKCS#11)",
}


@dataclass(frozen=True)
class Hop:
    """One SSH server to connect to, fully resolved."""

    alias: str  # what the user wrote
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    known_hosts: str | None = None  # UserKnownHostsFile from the config; the target's setting wins
    certificate_files: tuple[str, ...] = ()
    proxy_command: str | None = None  # tokens expanded; only used on the first hop of a chain
    refused: tuple[str, ...] = ()  # "Option value (why)" the Python back ends cannot honour

    def known_hosts_for(self, target: SSHTarget) -> str | None:
        """The known_hosts file this hop's key is checked in: the target's (the preset's) wins over the
        config's; None: the default file."""
        return target.known_hosts or self.known_hosts


def _config_arg(target: SSHTarget) -> str | None:
    """The -F of `ssh -G`: None for OpenSSH's own choice (~/.ssh/config and /etc/ssh/ssh_config)."""
    if target.ssh_config in (None, ""):
        return None
    if target.ssh_config == "none":
        return "none"
    path = Path(target.ssh_config).expanduser()
    if not path.is_file():
        raise PresetError(f"ssh config file not found: {path}")
    return str(path)


def parse_ssh_g(text: str) -> dict[str, list[str]]:
    """`ssh -G` output: one "key value" per line; multi-valued keys repeat."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if not key:
            continue
        key = key.lower()
        if key in MULTI:
            found.setdefault(key, []).append(value)
        elif key in ("userknownhostsfile", "globalknownhostsfile"):
            found[key] = value.split()
        else:
            found[key] = [value]
    for key in ("proxyjump", "proxycommand"):
        if found.get(key, [""])[0].lower() == "none":
            found.pop(key)
    return found


def ask_openssh(ssh: str, config: str | None, host: str, user: str | None, port: int | None) -> dict[str, list[str]]:
    """What OpenSSH resolves for `ssh [-l user] [-p port] host`: the preset's values as a command line's."""
    argv = [ssh, "-G", *(["-F", config] if config else []), *(["-l", user] if user else []),
            *(["-p", str(port)] if port else []), "--", host]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SSH_G_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PresetError(f"`ssh -G {host}` (reading the ssh config) failed: {exc}") from exc
    if done.returncode != 0:
        raise PresetError(f"OpenSSH cannot read the ssh config for {host}: "
                          f"{done.stderr.strip() or f'ssh -G exited {done.returncode}'}")
    return parse_ssh_g(done.stdout)


def resolve_options(config: str | None, host: str, user: str | None, port: int | None) -> dict[str, list[str]]:
    """OpenSSH's resolution for one host: `ssh -G` where the client is installed, our copy of its rules else."""
    # BRAAS_SSH_G: the ssh to ask, or "none" for our rules (tests compare both; a broken ssh can be bypassed).
    ssh = os.environ.get("BRAAS_SSH_G", shutil.which("ssh") or "")
    if ssh and ssh != "none":
        try:
            return ask_openssh(ssh, config, host, user, port)
        except PresetError as exc:
            if "option -- G" not in str(exc):  # an OpenSSH older than 6.8 has no -G: use the rules
                raise
    return resolve_rules(config, host, user, port)


def _hop(config: str | None, alias: str, user: str | None, port: int | None,
         keys: tuple[str, ...]) -> tuple[Hop, str | None]:
    found = resolve_options(config, alias, user, port)
    hostname = found.get("hostname", [alias])[0]
    hop_port = int(found.get("port", ["22"])[0])
    hop_user = found.get("user", [user or getpass.getuser()])[0]

    def paths(key: str) -> tuple[str, ...]:
        return tuple(expand_tokens(v, alias=alias, hostname=hostname, port=hop_port, user=hop_user, path=True)
                     for v in found.get(key, []))

    identities = found.get("identityfile", [])
    configured = () if tuple(identities) == DEFAULT_IDENTITIES else paths("identityfile")
    known = found.get("userknownhostsfile", [])
    default_known = [f"{home()}/.ssh/known_hosts", f"{home()}/.ssh/known_hosts2"]
    command = found.get("proxycommand", [None])[0]
    refused = tuple(f"{key} {found[key][0]} ({why})" for key, why in NOT_SUPPORTED.items()
                    if key in found and found[key][0].lower() not in ("no", "none", ""))
    hop = Hop(
        alias=alias, hostname=hostname, port=hop_port, user=hop_user,
        key_files=keys or configured,
        known_hosts=None if known in ([], default_known) else known[0],  # ssh -G prints it expanded
        certificate_files=paths("certificatefile"),
        proxy_command=None if command is None else expand_tokens(
            command, alias=alias, hostname=hostname, port=hop_port, user=hop_user, path=False),
        refused=refused,
    )
    return hop, found.get("proxyjump", [None])[0]


def split_jump(spec: str) -> tuple[str, str | None, int | None]:
    """One ProxyJump entry: "[user@]host[:port]" or "ssh://[user@]host[:port]"; IPv6 in brackets."""
    user, _, hostport = spec.strip().removeprefix("ssh://").rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host, port = hostport, ""  # a bare IPv6 address has several colons and no port
    if not host or (port and not port.isdigit()):
        raise PresetError(f"ProxyJump entry {spec!r} is not [ssh://][user@]host[:port]")
    return host, user or None, int(port) if port else None


def refuse_unsupported(chain: list[Hop], backend: str) -> None:
    """A back end that cannot honour an option says so before connecting, naming the option."""
    for hop in chain:
        if hop.refused:
            raise PresetError(f"the {backend} back end cannot use {'; '.join(hop.refused)} from the ssh config "
                              f"for {hop.alias}; use the openssh back end, or remove the option for this host")


def resolve(target: SSHTarget, backend: str | None = None) -> list[Hop]:
    """The chain of servers to go through: jump hosts first, the target last.

    `backend`: the back end that will connect, refused an option it cannot honour."""
    config = _config_arg(target)
    keys = tuple(str(Path(k).expanduser()) for k in target.key_files)
    final, jump = _hop(config, target.host, target.user, target.port, keys)
    if target.proxy_jump:  # the preset's ProxyJump wins, as -J on a command line does over ProxyCommand
        jump = target.proxy_jump
    if jump:
        final = replace(final, proxy_command=None)
    chain: list[Hop] = []
    while jump:
        # ProxyJump "a,b": connect to a, then through it to b, then to the target.
        hops, next_jump = [], None
        for index, spec in enumerate(jump.split(",")):
            host, user, port = split_jump(spec)
            hop, first_jump = _hop(config, host, user, port, ())
            hops.append(hop)
            if index == 0:
                next_jump = first_jump
        chain = hops + chain
        jump = next_jump
        if len(chain) > MAX_JUMPS:
            raise PresetError(f"ProxyJump chain for {target.host} is longer than {MAX_JUMPS} hops (a loop?)")
    # Only the first server is reached by its own ProxyCommand; the others through the hop before them.
    chain = [*chain[:1], *(replace(hop, proxy_command=None) for hop in chain[1:]), final]
    if backend is not None:
        refuse_unsupported(chain, backend)
    return chain


def missing_proxy_hint(alias: str) -> str:
    return (f" (no ProxyJump or ProxyCommand applies to {alias} in your ssh config: if this cluster is "
            "reached through a gateway or a VPN, connect the VPN or set ProxyJump for it in ~/.ssh/config "
            "or proxy_jump in the preset)")


def no_proxy_hint(hop: Hop, via: object, exc: BaseException) -> str:
    """A time-out reaching a server directly: the usual cause is a cluster reachable only through a gateway."""
    if via is not None or hop.proxy_command or not isinstance(exc, TimeoutError | socket.timeout):
        return ""
    return missing_proxy_hint(hop.alias)
