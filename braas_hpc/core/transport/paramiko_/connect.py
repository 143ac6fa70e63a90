"""connect() and close(): one paramiko Transport per hop, the host key checked before any credential.

Host keys are checked by us (hostkeys.check_host_key) on the key the server presents, so the errors
and fingerprints are the same as with asyncssh. ProxyJump is built by hand: each next hop's socket is
a direct-tcpip channel of the hop before it.
"""

from __future__ import annotations

import os
import shlex
import socket

import paramiko

from ...errors import ConnectionFailed
from ..hostkeys import check_host_key, known_hosts_path, recorded_keys
from ..proxycommand import Proxy, proxy_argv
from ..sshconfig import Hop, no_proxy_hint, resolve
from .auth import Authenticating
from .channels import MAX_PACKET, WINDOW
from .diagnose import Diagnosing, why
from .threads import close_later, close_quietly, in_thread

# AES-GCM first: one cryptography call per packet and no separate HMAC; aes128-ctr with HMAC moved
# half the MB/s here.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr")


def _key_family(algorithm: str) -> str:
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


class Connecting(Authenticating, Diagnosing):
    """connect() and close(): the chain of hops, opened on a thread, the target last."""

    async def connect(self) -> None:
        async with self._lock:
            if self._alive():
                return
            close_later(self._detach())
            self._hops = await in_thread(self._open_chain, orphan=lambda hops: close_later(hops[::-1]))

    def _open_chain(self) -> list[paramiko.Transport]:
        opened: list[paramiko.Transport] = []
        try:
            for hop in resolve(self.target, "paramiko"):
                opened.append(self._open_hop(hop, opened[-1] if opened else None))
        except BaseException:
            close_quietly(*reversed(opened), *self._proxies)
            self._proxies = []
            raise
        return opened

    def _open_hop(self, hop: Hop, via: paramiko.Transport | None) -> paramiko.Transport:
        where = f"{hop.user}@{hop.hostname}:{hop.port}"
        # Keys first: a passphrase prompt must not eat into the server's LoginGraceTime.
        keys, agent = self._credentials(hop)
        sock = self._socket(hop, via, where)
        transport = None
        try:
            transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
            self._handshake(transport, hop, where)
            self._authenticate(transport, hop, keys, where)
            transport.set_keepalive(int(self.target.keepalive_s))
        except BaseException:
            close_quietly(transport or sock)
            raise
        finally:
            if agent is not None:
                agent.close()
        return transport

    def _socket(self, hop: Hop, via: paramiko.Transport | None, where: str) -> socket.socket | paramiko.Channel:
        timeout = self.target.connect_timeout
        try:
            if via is None and hop.proxy_command and os.name == "posix":
                proxy = Proxy(hop.proxy_command)  # ended by close()
                self._proxies.append(proxy)
                proxy.sock.settimeout(timeout)
                return proxy.sock
            if via is None and hop.proxy_command:  # no socket pair for a child on Windows
                command = paramiko.ProxyCommand(shlex.join(proxy_argv(hop.proxy_command)))
                command.settimeout(timeout)
                return command  # type: ignore[return-value]
            if via is None:
                sock = socket.create_connection((hop.hostname, hop.port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # commands are small round trips
                if hasattr(socket, "TCP_USER_TIMEOUT"):
                    # paramiko's keepalives expect no reply, so a silent peer is only noticed when the
                    # kernel gives up on unacknowledged data: make that ~3 keepalives, not ~15 minutes.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self._stall_timeout * 1000))
                return sock
            # ProxyJump: the jump host opens the TCP connection; its channel is our socket.
            return via.open_channel("direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            through = " through the jump host" if via is not None else ""
            through = f" through ProxyCommand {hop.proxy_command!r}" if via is None and hop.proxy_command else through
            raise ConnectionFailed(f"cannot connect to {where}{through}: {why(exc)}{no_proxy_hint(hop, via, exc)}"
                                   ) from exc

    def _handshake(self, transport: paramiko.Transport, hop: Hop, where: str) -> None:
        timeout = self.target.connect_timeout
        transport.banner_timeout = transport.handshake_timeout = timeout
        options = transport.get_security_options()
        options.ciphers = [c for c in CIPHERS if c in options.ciphers] + [
            c for c in options.ciphers if c not in CIPHERS]
        # Ask for the host key type known_hosts records (as OpenSSH does), else a server with
        # several host keys could present another one and look "changed".
        known_hosts = known_hosts_path(hop.known_hosts_for(self.target))
        recorded = {kind for kind, _ in recorded_keys(known_hosts, hop.hostname, hop.port)}
        known = [a for a in options.key_types if _key_family(a) in recorded]
        options.key_types = known + [a for a in options.key_types if a not in known]
        try:
            transport.start_client(timeout=timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionFailed(f"cannot connect to {where}: {why(exc)}") from exc
        key = transport.get_remote_server_key()
        check_host_key(known_hosts, hop.hostname, hop.port, key.get_name(), key.asbytes())

    async def close(self) -> None:
        for forward in list(self._forwards):
            await forward.close()
        async with self._lock:
            things = self._detach()
        if things:
            await in_thread(close_quietly, *things)
