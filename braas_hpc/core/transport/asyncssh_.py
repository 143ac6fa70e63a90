"""The asyncssh back end: one connection, commands on channels, files over SFTP, native forwards.

Host keys are always checked against known_hosts; when the check fails we fetch the key once more
to tell the user its type and fingerprint (unknown) or to refuse it loudly (changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    # asyncssh names DSA's key types as it loads (it still reads DSA keys), and cryptography answers each
    # with a deprecation warning: six blocks on every command, to users who have never had a DSA key.
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh

from ..errors import AuthenticationFailed, ConnectionFailed, ConnectionLost, TransferError
from .base import (
    HOLD_COMMAND,
    Forward,
    NoPrompts,
    Progress,
    Prompts,
    Release,
    RemoteEntry,
    SSHTarget,
    StreamHandle,
    Transport,
    connect_error_words,
    make_private_socket,
    merge_lines,
    remote_line,
    unlink_stale_socket,
    write_argv,
)
from .hostkeys import check_host_key, known_hosts_path
from .kept_shell import SHELL_COMMAND, KeptShell, SessionLost, ShellPipe, run_kept
from .proxycommand import Proxy, proxy_argv
from .sshconfig import Hop, no_proxy_hint, resolve

COPY_BLOCK = 64 * 1024  # under OpenSSH sftp-server's 256 KiB message limit
STREAM_BLOCK = 1 << 20
SFTP_PARALLEL = 32  # outstanding SFTP requests: what keeps throughput up on high-latency links
PASSPHRASE_TRIES = 3
# AES-GCM first: with AES-NI it moves about 1.4x the bytes of asyncssh's ChaCha20 (bench/ssh_bench.py).
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr"]
_LOST = (asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection,
         BrokenPipeError, ConnectionResetError)


def readable_known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    """The file's entries, parsed by us for asyncssh. A missing file trusts no host, as with OpenSSH
    (asyncssh takes a missing or empty argument for "read ~/.ssh/known_hosts"), and a line asyncssh
    cannot read is skipped, as OpenSSH does (asyncssh raised a ValueError for the whole file)."""
    good = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                asyncssh.import_known_hosts(line)
            except (ValueError, asyncssh.KeyImportError):
                continue
            good.append(line)
    return asyncssh.SSHKnownHosts("\n".join(good))  # an object: never the "use the default file" value


class _Client(asyncssh.SSHClient):
    """Sends keyboard-interactive prompts (MFA codes) to the user's callback, once per connection."""

    def __init__(self, prompts: Prompts) -> None:
        self._prompts = prompts

    def kbdint_auth_requested(self) -> str:
        return ""  # let the server choose its sub-methods

    async def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: list[tuple[str, bool]]
    ) -> list[str] | None:
        if not prompts:
            return []  # servers send an empty round after the code: answer it without asking
        return await asyncio.to_thread(self._prompts.kbdint, name, instructions, list(prompts))


def _load_key(path: str, prompts: Prompts) -> list[asyncssh.SSHKeyPair]:
    """Key pairs of one file (with its -cert.pub); asks for the passphrase when the key is encrypted."""
    try:
        return asyncssh.load_keypairs([path])
    except asyncssh.KeyImportError as exc:
        if "passphrase" not in str(exc).lower():
            raise ConnectionFailed(f"cannot read the key {path}: {exc}") from exc
    for _ in range(PASSPHRASE_TRIES):
        passphrase = prompts.passphrase(path)
        if passphrase is None:
            break
        try:
            return asyncssh.load_keypairs([path], passphrase=passphrase)
        except (asyncssh.KeyEncryptionError, asyncssh.KeyImportError):
            continue
    raise AuthenticationFailed(f"the key {path} is encrypted and no correct passphrase was given")


class AsyncsshForward(Forward):
    def __init__(self, listener: asyncssh.SSHListener, remote_host: str, remote_port: int,
                 conn: asyncssh.SSHClientConnection | None = None, local_path: str | None = None) -> None:
        self._listener = listener
        self._conn = conn
        self._closed = False
        self.local_path = local_path
        self.local_port = 0 if local_path else listener.get_port()
        self.remote_host = remote_host
        self.remote_port = remote_port

    async def close(self) -> None:
        self._closed = True
        self._listener.close()
        await self._listener.wait_closed()

    async def alive(self) -> bool:
        # The listener belongs to its connection: asyncssh closes it when the connection drops.
        return not self._closed and not (self._conn is not None and self._conn.is_closed())


class AsyncsshPipe(ShellPipe):
    """The kept remote sh on a session channel of the connection."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process

    @property
    def alive(self) -> bool:
        return not self._process.is_closing() and self._process.exit_status is None

    async def write(self, data: bytes) -> None:
        try:
            self._process.stdin.write(data)
            await self._process.stdin.drain()
        except _LOST as exc:
            raise ConnectionResetError(str(exc)) from exc

    async def readline(self) -> bytes:
        try:
            return await self._process.stdout.readline()
        except _LOST as exc:
            raise ConnectionResetError(str(exc)) from exc

    async def readexactly(self, size: int) -> bytes:
        try:
            return await self._process.stdout.readexactly(size)
        except _LOST as exc:
            raise ConnectionResetError(str(exc)) from exc

    async def abort(self) -> None:
        self._process.close()

    async def close(self) -> None:
        with contextlib.suppress(*_LOST, OSError):
            self._process.stdin.write_eof()
        with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
            await asyncio.wait_for(self._process.wait_closed(), 5)
        self._process.close()


class AsyncsshTransport(Transport):
    name = "asyncssh"

    def __init__(self, target: SSHTarget, prompts: Prompts | None = None) -> None:
        self.target = target
        self.prompts = prompts or NoPrompts()
        self._conns: list[asyncssh.SSHClientConnection] = []  # jump hosts first, the target last
        self._proxies: list[Proxy] = []  # the ProxyCommand of the first hop, when the config has one
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._keys: dict[str, list[asyncssh.SSHKeyPair]] = {}
        self._shell = KeptShell(self._open_shell)  # short commands without a channel of their own

    # ---- connection ---------------------------------------------------------------------------

    @property
    def _conn(self) -> asyncssh.SSHClientConnection | None:
        return self._conns[-1] if self._conns else None

    def _alive(self) -> bool:
        return bool(self._conns) and not any(c.is_closed() for c in self._conns)

    async def connect(self) -> None:
        async with self._lock:
            if self._alive():
                return
            await self._drop()
            tunnel: asyncssh.SSHClientConnection | None = None
            for hop in await asyncio.to_thread(resolve, self.target, "asyncssh"):
                tunnel = await self._connect_hop(hop, tunnel)
                self._conns.append(tunnel)

    async def _connect_hop(self, hop: Hop, tunnel: asyncssh.SSHClientConnection | None
                           ) -> asyncssh.SSHClientConnection:
        options = await self._options(hop)
        if tunnel is not None:
            options["tunnel"] = tunnel
        elif hop.proxy_command and os.name == "posix":
            proxy = Proxy(hop.proxy_command)  # ended with the connection (_drop)
            self._proxies.append(proxy)
            options["sock"] = proxy.sock
        elif hop.proxy_command:
            options["proxy_command"] = proxy_argv(hop.proxy_command)  # no socket pair for a child on Windows
        try:
            return await asyncssh.connect(hop.hostname, hop.port, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            await self._explain_host_key(hop, tunnel)
            raise ConnectionFailed(f"the host key of {hop.hostname}:{hop.port} was not accepted: {exc}") from exc
        except asyncssh.PermissionDenied as exc:
            raise AuthenticationFailed(
                f"{hop.user}@{hop.hostname}:{hop.port} refused the login ({exc.reason}); offered: "
                f"{', '.join(hop.key_files or self.target.key_files) or 'ssh-agent and default keys'}") from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            through = f" through ProxyCommand {hop.proxy_command!r}" if tunnel is None and hop.proxy_command else ""
            raise ConnectionFailed(f"cannot connect to {hop.user}@{hop.hostname}:{hop.port}{through}: "
                                   f"{connect_error_words(exc)}{no_proxy_hint(hop, tunnel, exc)}") from exc

    async def _options(self, hop: Hop) -> dict[str, Any]:
        options: dict[str, Any] = {
            "username": hop.user,
            "known_hosts": self._known_hosts_arg(hop),
            "config": None,  # already resolved by sshconfig.resolve, the same way as for paramiko
            "connect_timeout": self.target.connect_timeout,
            "keepalive_interval": self.target.keepalive_s,
            "keepalive_count_max": 3,
            "encryption_algs": CIPHERS,
            "client_factory": lambda: _Client(self.prompts),
        }
        key_files = hop.key_files or tuple(str(Path(k).expanduser()) for k in self.target.key_files)
        if key_files:
            options["client_keys"] = [pair for path in key_files for pair in await self._key(path)]
        if hop.certificate_files:  # CertificateFile: asyncssh pairs each with its key
            options["client_certs"] = list(hop.certificate_files)
        if not self.target.use_agent:
            options["agent_path"] = None
        return options

    def _known_hosts(self, hop: Hop) -> str | None:
        return hop.known_hosts_for(self.target)

    def _known_hosts_arg(self, hop: Hop) -> asyncssh.SSHKnownHosts:
        return readable_known_hosts(known_hosts_path(self._known_hosts(hop)))

    async def _key(self, path: str) -> list[asyncssh.SSHKeyPair]:
        # Decrypted once per transport: the passphrase is asked once, kept in memory only.
        if path not in self._keys:
            self._keys[path] = await asyncio.to_thread(_load_key, path, self.prompts)
        return self._keys[path]

    async def _explain_host_key(self, hop: Hop, tunnel: asyncssh.SSHClientConnection | None) -> None:
        """Fetch the key the server offers and raise HostKeyUnknown/HostKeyChanged with its fingerprint."""
        try:
            key = await asyncssh.get_server_host_key(
                hop.hostname, hop.port, tunnel=tunnel if tunnel is not None else (), config=None)
        except (OSError, asyncssh.Error, TimeoutError):
            return
        if key is not None:
            check_host_key(self._known_hosts(hop), hop.hostname, hop.port, key.get_algorithm(), key.public_data)

    async def _drop(self) -> None:
        self._shell.forget()
        for conn in reversed(self._conns):
            conn.close()
        self._conns = []
        for proxy in self._proxies:
            proxy.end()
        self._proxies = []
        self._sftp = None

    async def close(self) -> None:
        async with self._lock:
            conns = list(self._conns)
            await self._drop()
        for conn in reversed(conns):
            await conn.wait_closed()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        await self.connect()
        assert self._conn is not None
        return self._conn

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        conn = await self._connection()
        if self._sftp is None:
            try:
                self._sftp = await conn.start_sftp_client()
            except asyncssh.ChannelOpenError as exc:
                raise await self._refused_or_lost(exc) from exc
        return self._sftp

    async def _refused_or_lost(self, exc: asyncssh.ChannelOpenError) -> Exception:
        """A channel refused because the connection closed under it (sshd restarted between our check and
        the channel's opening) is a lost connection, which callers wait out or resume from; a refusal by
        a live server stays what it is. asyncssh finishes a close in a callback it schedules, so the
        connection only reads as closed once the loop has run it."""
        await asyncio.sleep(0)
        return exc if self._alive() else self._lost(exc)

    def _lost(self, exc: BaseException) -> ConnectionLost:
        """Forget the broken chain; the next call connects again."""
        self._shell.forget()
        for conn in self._conns:
            conn.close()
        self._conns = []
        self._sftp = None
        return ConnectionLost(f"the connection to {self.target.host} dropped: {exc or type(exc).__name__}")

    def _check_cut(self, exit_status: int | None) -> None:
        """asyncssh ends a command whose connection dropped without an error, and without an exit status:
        that is a lost connection (which transfers resume from), not a failed command."""
        if exit_status is None and not self._alive():
            raise self._lost(ConnectionResetError("the connection closed before the command ended"))

    # ---- primitives ---------------------------------------------------------------------------

    async def _open_shell(self) -> ShellPipe:
        conn = await self._connection()
        return AsyncsshPipe(await conn.create_process(SHELL_COMMAND, encoding=None))

    async def _connection_gone(self, lost: SessionLost) -> Exception | None:
        await asyncio.sleep(0)  # asyncssh marks a connection closed in a callback it schedules
        return None if self._alive() else self._lost(lost)

    def _kept_shell(self) -> KeptShell | None:
        return self._shell

    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None
                    ) -> tuple[int | None, bytes, bytes]:
        if (done := await run_kept(self._shell, command, stdin, timeout, self.connect,
                                   self._connection_gone)) is not None:
            return done
        conn = await self._connection()
        try:
            # No input is /dev/null: a command reading its stdin (given b"") would otherwise wait for ever.
            process = await conn.create_process(command, stdin=asyncssh.PIPE if stdin else asyncssh.DEVNULL,
                                                encoding=None)
            if stdin:
                # A command may end without reading all its input (a refusal, or `kill`): the channel is then
                # closed to our writing, and its exit status, not a dropped connection, says how it went.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    process.stdin.write(stdin)
                    process.stdin.write_eof()
            done = await process.wait(check=False, timeout=timeout)
        except _LOST as exc:
            raise self._lost(exc) from exc
        except asyncssh.ChannelOpenError as exc:
            raise await self._refused_or_lost(exc) from exc
        self._check_cut(done.exit_status)
        return done.exit_status, bytes(done.stdout or b""), bytes(done.stderr or b"")

    async def _open_stream(self, command: str, stdin: bool = False) -> StreamHandle:
        conn = await self._connection()
        try:
            process = await conn.create_process(command, stdin=asyncssh.PIPE if stdin else asyncssh.DEVNULL,
                                                encoding=None)
        except asyncssh.ChannelOpenError as exc:
            raise await self._refused_or_lost(exc) from exc
        lines, stop = merge_lines(process.stdout, process.stderr)

        async def write(data: bytes) -> None:
            try:
                process.stdin.write(data)
                await process.stdin.drain()
            except _LOST as exc:
                raise self._lost(exc) from exc

        async def write_eof() -> None:
            with contextlib.suppress(*_LOST):
                process.stdin.write_eof()

        async def wait() -> int | None:
            done = await process.wait(check=False)
            return done.exit_status

        async def close() -> None:
            stop()
            process.close()

        return StreamHandle(lines, wait, close, write if stdin else None, write_eof if stdin else None)

    async def _size(self, remote: str) -> int | None:
        sftp = await self._sftp_client()
        try:
            attrs = await sftp.stat(remote)
        except asyncssh.SFTPNoSuchFile:
            return None
        except _LOST as exc:
            raise self._lost(exc) from exc
        return attrs.size

    async def _send(self, local: Path, remote: str, offset: int, progress: Progress | None) -> None:
        # Streamed into a remote dd over a plain channel: about 1.3x the bytes of asyncssh's SFTP
        # writes here (bench/ssh_bench.py), and the same command serves a resume from `offset`.
        conn = await self._connection()
        total = local.stat().st_size
        try:
            process = await conn.create_process(remote_line(write_argv(remote, offset)), encoding=None)
            with local.open("rb") as source:
                source.seek(offset)
                position = offset
                while chunk := source.read(STREAM_BLOCK):
                    process.stdin.write(chunk)
                    await process.stdin.drain()
                    position += len(chunk)
                    if progress:
                        progress(position, total)
            process.stdin.write_eof()
            done = await process.wait(check=False)
        except _LOST as exc:
            raise self._lost(exc) from exc
        except asyncssh.ChannelOpenError as exc:
            raise await self._refused_or_lost(exc) from exc
        self._check_cut(done.exit_status)
        if done.exit_status != 0:
            stderr = bytes(done.stderr or b"").decode(errors="replace").strip()
            raise TransferError(f"writing {remote} on {self.target.host} failed: {stderr[-500:]}")

    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        sftp = await self._sftp_client()
        try:
            if offset == 0:
                await sftp.get(remote, str(local), max_requests=SFTP_PARALLEL, progress_handler=_adapt(progress))
                return
            async with sftp.open(remote, "rb") as source:
                await _copy_to(source, local, offset, progress)
        except _LOST as exc:
            raise self._lost(exc) from exc

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        sftp = await self._sftp_client()
        try:
            names = await sftp.readdir(remote)
        except asyncssh.SFTPNoSuchFile:
            return []
        except _LOST as exc:
            raise self._lost(exc) from exc
        return [
            RemoteEntry(n.filename, n.attrs.size or 0, n.attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY)
            for n in names
            if n.filename not in (".", "..")
            and n.attrs.type in (asyncssh.FILEXFER_TYPE_REGULAR, asyncssh.FILEXFER_TYPE_DIRECTORY)
        ]

    async def forward(self, remote_host: str, remote_port: int, local_port: int | None = None,
                      local_path: str | None = None) -> Forward:
        conn = await self._connection()
        if local_path:  # a direct-tcpip channel per connection, as for a port
            unlink_stale_socket(local_path)
            listener = await conn.forward_local_path_to_port(local_path, remote_host, remote_port)
            make_private_socket(local_path)
            return AsyncsshForward(listener, remote_host, remote_port, conn, local_path)
        listener = await conn.forward_local_port("127.0.0.1", local_port or 0, remote_host, remote_port)
        return AsyncsshForward(listener, remote_host, remote_port, conn)

    async def hold_interactive(self) -> Release | None:
        conn = await self._connection()
        try:
            process = await conn.create_process(HOLD_COMMAND, term_type="dumb")
        except asyncssh.Error as exc:  # a site that refuses terminals: the tunnel still works
            raise ConnectionFailed(f"{self.target.host} refused a terminal session: {exc}") from exc

        async def release() -> None:
            process.close()
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                await asyncio.wait_for(process.wait_closed(), timeout=5)

        return release


async def _copy_to(source: Any, local: Path, offset: int, progress: Progress | None) -> None:
    total = (await source.stat()).size or 0
    with local.open("r+b" if local.exists() else "wb") as out:
        out.seek(offset)
        out.truncate()
        position = offset
        while chunk := await source.read(COPY_BLOCK, position):
            out.write(chunk)
            position += len(chunk)
            if progress:
                progress(position, total)


def _adapt(progress: Progress | None) -> Any:
    if progress is None:
        return None
    return lambda _src, _dst, done, total: progress(done, total)
