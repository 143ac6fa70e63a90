"""The ssh command line: the options of every ssh we run for a target, and ProxyJump done by hand.

OpenSSH reads ~/.ssh/config itself (we never interpret it), except that a ProxyJump is done with our
own ProxyCommand so the jump hosts get the same known_hosts, keys and options as the target.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from ..base import SSHTarget
from ..hostkeys import known_hosts_path

SERVER_ALIVE_COUNT = 3


def pct(value: str) -> str:
    """ssh expands %-tokens in paths (IdentityFile, UserKnownHostsFile, ControlPath, ProxyCommand)."""
    return value.replace("%", "%%")


def _cfg(value: str) -> str:
    """A value for `-o Key=value`: ssh splits it like a config line, so quote blanks, quotes and '#'."""
    if value and not any(c in value for c in ' \t"\'\\#'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def opt(key: str, value: str) -> list[str]:
    return ["-o", f"{key}={value}"]


def ssh_options(target: SSHTarget, *, batch: bool, jump: bool = False) -> list[str]:
    """The options of every ssh we run for this target: config, identity, trust, timeouts.

    `jump=True` is the same for a jump host: without the target's own Port and User.
    Unset fields are left to OpenSSH (config file, then its defaults).
    """
    opts: list[str] = []
    if target.ssh_config:
        opts += ["-F", "none" if target.ssh_config == "none" else str(Path(target.ssh_config).expanduser())]
    if not jump and target.port:
        opts += opt("Port", str(target.port))
    if not jump and target.user:
        opts += opt("User", _cfg(target.user))
    for key in target.key_files:
        opts += ["-i", pct(str(Path(key).expanduser()))]
    if target.key_files:
        opts += opt("IdentitiesOnly", "yes")
    if not target.use_agent:
        opts += opt("IdentityAgent", "none")
    if target.known_hosts:  # None: what the config says, else ~/.ssh/known_hosts (OpenSSH's default)
        opts += opt("UserKnownHostsFile", _cfg(pct(str(known_hosts_path(target.known_hosts)))))
    # Never a mode that trusts new keys itself: trust is the user's decision.
    opts += opt("StrictHostKeyChecking", "yes")
    opts += opt("ConnectTimeout", str(max(1, math.ceil(target.connect_timeout))))
    opts += opt("ServerAliveInterval", str(max(0, math.ceil(target.keepalive_s))))
    opts += opt("ServerAliveCountMax", str(SERVER_ALIVE_COUNT))
    if batch:
        opts += opt("BatchMode", "yes")
    opts += opt("LogLevel", "ERROR")
    return opts


def split_jump(spec: str) -> tuple[str, str | None, str | None]:
    """One ProxyJump entry, "[user@]host[:port]" or ssh://..., as (host, user, port)."""
    user, _, hostport = spec.strip().removeprefix("ssh://").rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host, port = hostport, ""  # a bare IPv6 address has several colons and no port
    return host, user or None, port or None


def proxy_command(ssh: str, target: SSHTarget, jumps: str, *, batch: bool, log: str | None = None) -> str:
    """ProxyJump by hand: OpenSSH's -J hands only -F to the jump connection, we hand it all our options.

    "a,b" means a first, then b: the proxy to the target is `ssh b -W`, and b is reached the same way
    through a. ssh expands %-tokens of each level once, so inner levels are escaped once more.
    `log`: where the jump connections write their errors (a ControlPersist master silences their stderr).
    """
    *earlier, last = [s for s in (p.strip() for p in jumps.split(",")) if s]
    host, user, port = split_jump(last)
    argv = [ssh, *ssh_options(target, batch=batch, jump=True), *opt("ControlMaster", "no"), *opt("ControlPath", "none")]
    if log:
        argv += ["-E", log]
    if earlier:
        argv += opt("ProxyCommand", proxy_command(ssh, target, ",".join(earlier), batch=batch, log=log))
    if user:
        argv += opt("User", _cfg(user))
    if port:
        argv += opt("Port", port)
    return f"{pct(shlex.join(argv))} -W '[%h]:%p' -- {pct(shlex.quote(host))}"
