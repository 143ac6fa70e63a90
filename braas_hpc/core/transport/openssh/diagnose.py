"""What went wrong, from what ssh printed: typed errors, and host key failures explained like asyncssh's.

For a refused host key, ssh-keyscan fetches the keys the server offers and hostkeys.check_host_key
raises HostKeyUnknown/HostKeyChanged with the fingerprint the user can check.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil

from ...errors import AuthenticationFailed, ConnectionFailed, ConnectionLost, HostKeyError
from ..hostkeys import check_host_key, known_hosts_path, parse_public_key, recorded_keys
from ..sshconfig import missing_proxy_hint
from .client import NO_MASTER, Client
from .process import run_local

_HOST_KEY_FAILURES = ("Host key verification failed", "host key is known for", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                      "has changed and you have requested strict checking")
_AUTH_FAILURES = ("Permission denied", "Too many authentication failures")
# Lines ssh itself writes when a session could not be set up or broke (as opposed to the command's stderr).
_SSH_SAYS = re.compile(r"^(ssh: |mux_client_|muxclient: |kex_exchange_identification: |client_loop: |channel \d+: |"
                       r"Control socket |Connection (to .* )?closed|Connection reset|Timeout, server |"
                       r"ssh_dispatch_run_fatal|packet_write_wait|Broken pipe|" + NO_MASTER + ")")
# A multiplexed call never exchanges keys itself: these lines can only come from the no-master stand-in proxy.
_NOT_STARTED = (NO_MASTER.encode(), b"kex_exchange_identification", b"ssh_exchange_identification")
_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no error output)"


def _ssh_said(stderr: str) -> bool:
    last = stderr.strip().splitlines()[-1:] or [""]
    return bool(_SSH_SAYS.match(last[0].strip())) or NO_MASTER in stderr


def _key_type_order(algorithms: str) -> list[str]:
    """Key types in the order ssh prefers host key algorithms (certificates and security keys left out)."""
    order: list[str] = []
    for alg in algorithms.split(","):
        key_type = "ssh-rsa" if alg in _RSA_ALGORITHMS else alg
        if "-cert-" not in alg and not alg.startswith("sk-") and key_type not in order:
            order.append(key_type)
    return order


class Diagnosing(Client):
    """Maps ssh's failures to ConnectionFailed, ConnectionLost, AuthenticationFailed and host key errors."""

    def _where(self, info: dict[str, str]) -> str:
        user = info.get("user") or self.target.user or "?"
        return f"{user}@{info.get('hostname', self.target.host)}:{info.get('port', self.target.port or 22)}"

    async def _connect_error(self, stderr: str, info: dict[str, str]) -> ConnectionFailed:
        where = self._where(info)
        if any(marker in stderr for marker in _HOST_KEY_FAILURES):
            if self._proxy or info.get("proxycommand", "none") != "none":
                # ssh-keyscan cannot go through a jump host: say what ssh said.
                return ConnectionFailed(f"a host key on the way to {where} was not accepted:\n{tail(stderr)}")
            await self._explain_host_key(info)  # raises HostKeyUnknown/HostKeyChanged when it can tell
            return ConnectionFailed(f"the host key of {where} was not accepted:\n{tail(stderr)}")
        if any(marker in stderr for marker in _AUTH_FAILURES):
            self._passphrases.clear()  # one of them may be the wrong one
            offered = ", ".join(self.target.key_files) or "ssh-agent and default keys"
            return AuthenticationFailed(f"{where} refused the login; offered: {offered}\n{tail(stderr)}")
        direct = not self._proxy and all(info.get(k, "none") == "none" for k in ("proxycommand", "proxyjump"))
        hint = missing_proxy_hint(self.target.host) if direct and "timed out" in stderr else ""
        return ConnectionFailed(f"cannot connect to {where}{hint}:\n{tail(stderr)}")

    async def _explain_host_key(self, info: dict[str, str]) -> None:
        """Fetch the server's keys and let check_host_key raise the error the user can act on."""
        host, port = info.get("hostname", self.target.host), int(info.get("port", "22"))
        keyscan = shutil.which("ssh-keyscan")
        if keyscan is None:
            return
        timeout = max(1, math.ceil(self.target.connect_timeout))
        argv = [keyscan, "-p", str(port), "-t", "ed25519,ecdsa,rsa", "-T", str(timeout), "--", host]
        try:
            _, out, _ = await run_local(argv, self._env(), timeout + 10)
        except TimeoutError:
            return
        scanned: list[tuple[str, bytes]] = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith("#"):
                with contextlib.suppress(ValueError):
                    scanned.append(parse_public_key(f"{fields[1]} {fields[2]}"))
        # known_hosts names the HostKeyAlias (without port) when one is set, like OpenSSH does.
        alias = info.get("hostkeyalias", "none")
        name, name_port = (alias, 22) if alias != "none" else (host, port)
        # The file ssh checked first: the preset's, else the config's UserKnownHostsFile.
        configured = info.get("userknownhostsfile", "").split()
        known = self.target.known_hosts or (configured[0] if configured else None)
        # The key ssh negotiated: types already recorded for the host first, then ssh's preference.
        recorded = {key_type for key_type, _ in recorded_keys(known_hosts_path(known), name, name_port)}
        order = _key_type_order(info.get("hostkeyalgorithms", ""))

        def rank(key: tuple[str, bytes]) -> tuple[int, int]:
            return (key[0] not in recorded, order.index(key[0]) if key[0] in order else len(order))

        refused: list[HostKeyError] = []
        for key_type, blob in sorted(scanned, key=rank):
            try:
                check_host_key(known, name, name_port, key_type, blob)
            except HostKeyError as exc:
                refused.append(exc)
                continue
            return  # a recorded key: the failure was about something else
        if refused:
            raise refused[0]

    def _not_started(self, stderr: bytes) -> bool:
        """The call found no master, so the remote command never ran (safe to run again)."""
        return self._mux and any(marker in stderr for marker in _NOT_STARTED)

    async def _failed(self, stderr: bytes | str) -> None:
        """After exit status 255: raise when ssh itself failed; return when it was the command's own 255."""
        raw = stderr if isinstance(stderr, bytes) else stderr.encode()
        text = raw.decode(errors="replace")
        if self._mux:
            if self._not_started(raw) or not await self._master_alive():
                self._up = False  # the next call reconnects
                raise ConnectionLost(f"the connection to {self.target.host} dropped:\n{tail(text)}")
            if _ssh_said(text):
                raise ConnectionFailed(f"ssh could not open a session on {self.target.host}:\n{tail(text)}")
        elif _ssh_said(text):
            self._up = False
            raise ConnectionLost(f"the connection to {self.target.host} failed:\n{tail(text)}")

