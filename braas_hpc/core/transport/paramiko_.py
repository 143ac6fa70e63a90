"""The paramiko back end: one paramiko Transport per hop, commands on channels, files over SFTP.

paramiko blocks, so every call into it runs on a worker thread and the event loop only awaits.
Host keys are checked by us (hostkeys.check_host_key) on the key the server presents, before any
credential is sent, so the errors and fingerprints are the same as with asyncssh. ProxyJump is
built by hand: each next hop's socket is a direct-tcpip channel of the hop before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY
from scp import SCPClient, SCPException

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
    StreamLine,
    Transport,
    make_private_socket,
    unlink_stale_socket,
)
from .hostkeys import check_host_key, known_hosts_path, recorded_keys
from .sshconfig import Hop, resolve

PASSPHRASE_TRIES = 3
DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")  # tried when no key is configured
# AES-GCM first: one cryptography call per packet and no separate HMAC; aes128-ctr with HMAC moved
# half the MB/s here.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr")
# paramiko's channel buffer drops what was read by moving the rest down (`del buf[:n]`), so a small
# read costs as much as the whole buffer: reads take all of it where they can (DRAIN), and the window
# stays at 2 MiB because SFTP reads one message at a time (a 4 MiB window halved SFTP downloads,
# 8 MiB made scp downloads with 256 KiB reads 2.5x slower).
WINDOW = 2 * 1024 * 1024
MAX_PACKET = 64 * 1024  # largest packet the server may send us: fewer, larger packets (OpenSSH: 32 KiB)
DRAIN = 2 * WINDOW  # a read size that empties the channel buffer in one go
# Whole files go over the scp protocol (the `scp` package on this connection); 200 MB on loopback
# (median of 3, MB/s put/get): scp package 279/377, paramiko SFTP 165/232, OpenSSH scp 146/200.
# SFTP serves resumed transfers (scp cannot start mid-file) and servers where scp fails.
SCP_SEND_BLOCK = 256 * 1024  # above the package's 16 KiB: faster uploads; Channel.sendall copies larger ones
SFTP_REQUEST = 32 * 1024  # per SFTP read/write request when the server does not state its limits
SFTP_REQUEST_MAX = 255 * 1024  # OpenSSH's limit; fewer requests cut paramiko's per-request cost (2.5x downloads)
SFTP_PREFETCH = 64  # outstanding read requests while downloading
SFTP_IDLE = 4  # SFTP sessions kept open for reuse
FILE_BLOCK = 1024 * 1024  # local read/write size; also how often progress is reported
SEND_BLOCK = 64 * 1024  # what we hand to Channel.sendall at once (it copies the rest after each packet)

T = TypeVar("T")


# ---- threads ------------------------------------------------------------------------------------


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> bool:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        return False
    return True


def _in_thread(fn: Callable[..., T], *args: Any, orphan: Callable[[T], object] | None = None) -> asyncio.Future[T]:
    """Run a blocking call on its own daemon thread and await its result.

    Not asyncio.to_thread: the default executor has min(32, cpus + 4) workers, which long reads
    (streams, tunnels, long commands) would use up, and asyncio.run() joins them at exit, so a hung
    channel would hang the program. `orphan` releases a result nobody awaits any more (cancelled).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            if error is None and orphan is not None:
                orphan(result)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            _post(loop, settle, None, exc)
        else:
            if not _post(loop, settle, result, None) and orphan is not None:
                orphan(result)

    threading.Thread(target=work, name="braas-paramiko", daemon=True).start()
    return future


def _close_quietly(*things: Any) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            thing.close()


def _close_later(things: Sequence[Any]) -> None:
    """Close off the event loop: closing a paramiko Transport joins its thread."""
    if things:
        threading.Thread(target=_close_quietly, args=tuple(things), name="braas-paramiko-close", daemon=True).start()


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# ---- keys ---------------------------------------------------------------------------------------


def _load_key(path: str, prompts: Prompts | None) -> paramiko.PKey | None:
    """A key file with its -cert.pub, decrypted with a passphrase from `prompts` when needed.

    `prompts` None: a default key that is tried only if usable as is (asyncssh skips those too).
    PKey.from_path raises TypeError, not PasswordRequiredException, for an encrypted key without
    a password (cryptography's loader runs first), so both mean "encrypted".
    """
    try:
        return paramiko.PKey.from_path(path)
    except (TypeError, paramiko.PasswordRequiredException):
        pass
    except (OSError, ValueError, paramiko.SSHException, paramiko.UnknownKeyType) as exc:
        if prompts is None:
            return None
        raise ConnectionFailed(f"cannot read the key {path}: {_why(exc)}") from exc
    if prompts is None:
        return None
    for _ in range(PASSPHRASE_TRIES):
        passphrase = prompts.passphrase(path)
        if passphrase is None:
            break
        try:
            return paramiko.PKey.from_path(path, password=passphrase.encode())
        except (TypeError, ValueError, paramiko.SSHException):
            continue  # a wrong passphrase: ask again
    raise AuthenticationFailed(f"the key {path} is encrypted and no correct passphrase was given")


def _public_blob(path: str) -> bytes | None:
    """The key blob of an OpenSSH public key or certificate file, None when absent or unreadable."""
    try:
        return paramiko.PublicBlob.from_file(path).key_blob
    except (OSError, ValueError, IndexError):
        return None


def _skip_strings(blob: bytes, count: int) -> bytes:
    for _ in range(count):
        (length,) = struct.unpack(">I", blob[:4])
        blob = blob[4 + length:]
    return blob


def _certifies(cert: bytes, key: bytes) -> bool:
    """A certificate is (type, nonce, the key's public fields, ...); a plain key is (type, fields)."""
    try:
        return _skip_strings(cert, 2).startswith(_skip_strings(key, 1))
    except struct.error:
        return False


def _agent_key_for(path: str, agent_keys: list[paramiko.AgentKey]) -> paramiko.AgentKey | None:
    """The agent's copy of a key file (matched by its .pub or -cert.pub), with the certificate."""
    public = _public_blob(path + ".pub")
    cert = _public_blob(path + "-cert.pub")
    for key in agent_keys:
        blob = key.asbytes()
        if blob == public or (cert is not None and _certifies(cert, blob)):
            if cert is not None:
                with contextlib.suppress(ValueError, OSError):
                    key.load_certificate(path + "-cert.pub")
            return key
    return None


def _open_agent() -> tuple[paramiko.Agent | None, list[paramiko.AgentKey]]:
    try:
        agent = paramiko.Agent()  # SSH_AUTH_SOCK; no keys when there is no agent
        return agent, list(agent.get_keys())
    except (paramiko.SSHException, OSError):
        return None, []


class _Declined(EOFError):
    """The user gave no answer to a keyboard-interactive prompt. Raised in paramiko's thread, which
    then ends the connection; an EOFError because paramiko logs any other exception there as an error."""


def _key_family(algorithm: str) -> str:
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


# ---- channels -----------------------------------------------------------------------------------


def _chunks(chan: paramiko.Channel, deadline: float | None) -> Iterator[tuple[bytes, bool]]:
    """(data, is_stderr) until the server's EOF; reads both streams so neither can fill and block."""
    while True:
        eof = chan.eof_received or chan.closed  # read first: data always arrives before EOF
        if chan.recv_ready():
            yield chan.recv(DRAIN), False
        elif chan.recv_stderr_ready():
            yield chan.recv_stderr(DRAIN), True
        elif eof:
            return
        else:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError("the command did not finish in time")
            select.select([chan], [], [], wait)


def _exit_status(chan: paramiko.Channel, deadline: float | None) -> int:
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not chan.status_event.wait(wait):
        raise TimeoutError("the command did not finish in time")
    if chan.exit_status == -1 and not chan.get_transport().is_active():
        raise EOFError("the connection closed before the command finished")
    return int(chan.exit_status)


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    # Its own thread: a command that writes a lot before reading its input would otherwise deadlock.
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        for start in range(0, len(data), SEND_BLOCK):
            chan.sendall(data[start:start + SEND_BLOCK])
        chan.shutdown_write()


def _run(chan: paramiko.Channel, command: str, stdin: bytes | None, timeout: float | None
         ) -> tuple[int, bytes, bytes]:
    deadline = None if timeout is None else time.monotonic() + timeout
    chan.exec_command(command)
    if stdin:
        threading.Thread(target=_feed, args=(chan, stdin), name="braas-paramiko-stdin", daemon=True).start()
    else:
        chan.shutdown_write()
    out, err = bytearray(), bytearray()
    for data, is_err in _chunks(chan, deadline):
        (err if is_err else out).extend(data)
    status = _exit_status(chan, deadline)
    chan.close()
    return status, bytes(out), bytes(err)


def _start(transport: paramiko.Transport, command: str) -> paramiko.Channel:
    chan = transport.open_session()
    try:
        chan.exec_command(command)
        chan.shutdown_write()  # stdin is /dev/null
    except BaseException:
        chan.close()
        raise
    return chan


def _pump_lines(chan: paramiko.Channel, loop: asyncio.AbstractEventLoop,
                queue: asyncio.Queue[StreamLine | None], status: asyncio.Future[int]) -> None:
    """Reader thread of a stream: lines into the queue, then None, then the exit status."""

    def settle(value: int | None, error: BaseException | None) -> None:
        if status.done():
            return
        if error is not None:
            status.set_exception(error)
        else:
            status.set_result(value if value is not None else -1)

    partial = {False: b"", True: b""}

    def emit(data: bytes, is_err: bool) -> None:
        *whole, partial[is_err] = (partial[is_err] + data).split(b"\n")
        if whole:
            _post(loop, _put_lines, queue, [StreamLine(w.decode(errors="replace").rstrip("\r"), is_err) for w in whole])

    try:
        for data, is_err in _chunks(chan, None):
            emit(data, is_err)
        for is_err, rest in partial.items():
            if rest:
                _post(loop, _put_lines, queue, [StreamLine(rest.decode(errors="replace").rstrip("\r"), is_err)])
        _post(loop, queue.put_nowait, None)
        _post(loop, settle, _exit_status(chan, None), None)
    except BaseException as exc:  # noqa: BLE001 - handed to wait()
        _post(loop, queue.put_nowait, None)
        _post(loop, settle, None, exc)


def _put_lines(queue: asyncio.Queue[StreamLine | None], lines: list[StreamLine]) -> None:
    for line in lines:
        queue.put_nowait(line)


# ---- files --------------------------------------------------------------------------------------


@dataclass
class _Session:
    """An SFTP session and the request sizes its server accepts."""

    client: paramiko.SFTPClient
    read_size: int = SFTP_REQUEST
    write_size: int = SFTP_REQUEST

    def close(self) -> None:
        self.client.close()


def _open_sftp(transport: paramiko.Transport) -> _Session:
    client = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW, max_packet_size=MAX_PACKET)
    if client is None:
        raise paramiko.SSHException("the server refused the SFTP subsystem")
    session = _Session(client)
    try:
        # OpenSSH states its limits (limits@openssh.com); paramiko has no call for it, hence _request.
        kind, reply = client._request(CMD_EXTENDED, "limits@openssh.com")
    except OSError:
        return session  # not OpenSSH: the sizes every server accepts
    if kind == CMD_EXTENDED_REPLY:
        reply.get_int64()  # max packet length
        session.read_size = min(reply.get_int64(), SFTP_REQUEST_MAX) or SFTP_REQUEST
        session.write_size = min(reply.get_int64(), SFTP_REQUEST_MAX) or SFTP_REQUEST
    return session


class _Reporter:
    """Progress from a worker thread, run on the event loop (callers may touch asyncio or UI objects,
    as with asyncssh) at most every FILE_BLOCK bytes and at the end. The copy waits for each call, so
    what the callback does (even cancelling the transfer) happens at that point of the copy, and an
    exception it raises ends the transfer."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._loop = asyncio.get_running_loop()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        progress = self._progress
        if progress is None or (done - self._last < FILE_BLOCK and done < total):
            return
        self._last = done
        finished = threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            try:
                progress(min(done, total), total)
            except BaseException as exc:  # noqa: BLE001 - raised again in the copying thread
                failure.append(exc)
            finally:
                finished.set()

        if _post(self._loop, call):
            while not finished.wait(1.0) and not self._loop.is_closed():
                pass  # a loop that closed without running the call will never run it
        if failure:
            raise failure[0]


def _scp_path(remote: str) -> str:
    return "./" + remote if remote.startswith("-") else remote  # else scp takes it for an option


def _scp_send(chan: paramiko.Channel, local: Path, remote: str, report: _Reporter, timeout: float) -> None:
    total = local.stat().st_size
    client = SCPClient(chan.get_transport(), buff_size=SCP_SEND_BLOCK, socket_timeout=timeout,
                       progress=lambda _name, _size, sent: report(sent, total))
    client.channel = chan  # opened by the caller, who closes it on cancel
    with client:
        client.put(str(local), _scp_path(remote))


def _scp_receive(chan: paramiko.Channel, remote: str, local: Path, report: _Reporter, timeout: float) -> None:
    sizes: list[int] = []

    def progress(_name: object, size: int, done: int) -> None:
        if not sizes:  # the package starts a file with (size, 0), or says (1, 1) for an empty one
            sizes.append(0 if done == size else size)
        report(min(done, sizes[0]), sizes[0])

    client = SCPClient(chan.get_transport(), buff_size=DRAIN, socket_timeout=timeout, progress=progress)
    client.channel = chan
    with client:
        client.get(_scp_path(remote), str(local))
    if not sizes:  # the package takes a session that ends without a word (no scp there) for success
        raise SCPException(f"scp sent nothing for {remote}")


def _send_file(session: _Session, local: Path, remote: str, offset: int, report: _Reporter) -> None:
    total = local.stat().st_size
    with local.open("rb") as source, session.client.open(remote, "r+b" if offset else "wb") as out:
        out.set_pipelined(True)  # writes are not acknowledged one by one; errors surface at close
        out.MAX_REQUEST_SIZE = session.write_size
        source.seek(offset)
        out.seek(offset)
        done = offset
        while chunk := source.read(FILE_BLOCK):
            out.write(chunk)
            done += len(chunk)
            report(done, total)
        out.flush()
        # paramiko never reads the replies to pipelined writes, and its close() ignores a connection
        # that dropped: the upload would look complete with its tail lost. The server answers a stat of
        # the same handle only after every write sent before it, and a dropped connection fails it.
        written = out.stat().st_size or 0
    if written < total:
        raise TransferError(f"the server kept only {written} of {total} bytes of {remote}")


def _receive_file(session: _Session, remote: str, local: Path, offset: int, report: _Reporter) -> None:
    with session.client.open(remote, "rb") as source:
        total = source.stat().st_size or 0
        with local.open("r+b" if offset and local.exists() else "wb") as out:
            out.seek(offset)
            out.truncate()
            source.seek(offset)
            source.MAX_REQUEST_SIZE = session.read_size
            source.prefetch(total, SFTP_PREFETCH)  # the reads are requested ahead, in parallel
            done = offset
            while chunk := source.read(FILE_BLOCK):
                out.write(chunk)
                done += len(chunk)
                report(done, total)


# ---- forwards -----------------------------------------------------------------------------------


class _Splice:
    """One tunnelled connection: a local socket and an SSH channel, copied both ways by two threads."""

    def __init__(self, conn: socket.socket, chan: paramiko.Channel, done: Callable[[_Splice], None]) -> None:
        self.conn = conn
        self.chan = chan
        self._done = done
        self._running = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        # Blocking copies on both sides: each direction gets back-pressure from the slower end.
        threading.Thread(target=self._copy, args=(self.conn.recv, SEND_BLOCK, self.chan.sendall,
                                                  self.chan.shutdown_write), name="braas-paramiko-fwd",
                         daemon=True).start()
        threading.Thread(target=self._copy, args=(self.chan.recv, DRAIN, self.conn.sendall, self._local_eof),
                         name="braas-paramiko-fwd", daemon=True).start()

    def _local_eof(self) -> None:
        self.conn.shutdown(socket.SHUT_WR)

    def _copy(self, read: Callable[[int], bytes], size: int, write: Callable[[bytes], object],
              eof: Callable[[], object]) -> None:
        try:
            while data := read(size):
                write(data)
            eof()  # half-close: the other direction may still be sending
            failed = False
        except (OSError, EOFError, paramiko.SSHException):
            failed = True
        with self._lock:
            self._running -= 1
            finished = failed or self._running == 0
        if finished:
            self.close()

    def close(self) -> None:
        _close_quietly(self.chan)
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        _close_quietly(self.conn)
        self._done(self)


class ParamikoForward(Forward):
    def __init__(self, owner: ParamikoTransport, listener: socket.socket, remote_host: str, remote_port: int,
                 local_path: str | None = None) -> None:
        self._owner = owner
        self._listener = listener
        self.local_path = local_path
        self.local_port = 0 if local_path else listener.getsockname()[1]
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._splices: set[_Splice] = set()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.create_task(self._accept())

    async def _accept(self) -> None:
        # A plain accept loop rather than asyncio streams: the copies run on blocking sockets in threads.
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._listener)
            except OSError:  # e.g. out of file descriptors: keep listening
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._tunnel(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _tunnel(self, conn: socket.socket, peer: tuple[str, int] | str) -> None:
        origin = peer if isinstance(peer, tuple) else ("127.0.0.1", 0)  # a Unix socket's peer has no address
        try:
            chan = await self._owner._open_tunnel(self.remote_host, self.remote_port, origin)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:  # noqa: BLE001 - refused or unreachable: this one connection is closed
            conn.close()
            return
        conn.setblocking(True)
        if conn.family != getattr(socket, "AF_UNIX", None):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small lock-step messages go at once
        splice = _Splice(conn, chan, self._forget)
        with self._lock:
            self._splices.add(splice)
        splice.start()

    def _forget(self, splice: _Splice) -> None:
        with self._lock:
            self._splices.discard(splice)

    async def alive(self) -> bool:
        # Each tunnelled connection reconnects the transport when needed: the listener is what must live.
        return self._listener.fileno() != -1 and not self._accepting.done()

    async def close(self) -> None:
        self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._listener.close()
        with self._lock:
            splices = list(self._splices)
        for splice in splices:
            splice.close()
        self._owner._forwards.discard(self)


# ---- the transport ------------------------------------------------------------------------------


class ParamikoTransport(Transport):
    name = "paramiko"

    def __init__(self, target: SSHTarget, prompts: Prompts | None = None) -> None:
        self.target = target
        self.prompts = prompts or NoPrompts()
        self._hops: list[paramiko.Transport] = []  # jump hosts first, the target last
        self._idle: list[_Session] = []
        self._channels: set[paramiko.Channel] = set()  # open streams, closed with the connection
        self._forwards: set[ParamikoForward] = set()
        self._lock = asyncio.Lock()
        self._keys: dict[str, paramiko.PKey] = {}  # decrypted once per transport, in memory only

    # ---- connection ---------------------------------------------------------------------------

    @property
    def _stall_timeout(self) -> float:
        # Like asyncssh's keepalive_count_max=3: three missed keepalives and the connection is dead.
        return max(3 * self.target.keepalive_s, 10.0)

    def _alive(self) -> bool:
        return bool(self._hops) and all(t.is_active() for t in self._hops)

    async def connect(self) -> None:
        async with self._lock:
            if self._alive():
                return
            _close_later(self._detach())
            self._hops = await _in_thread(self._open_chain, orphan=lambda hops: _close_later(hops[::-1]))

    def _open_chain(self) -> list[paramiko.Transport]:
        opened: list[paramiko.Transport] = []
        try:
            for hop in resolve(self.target):
                opened.append(self._open_hop(hop, opened[-1] if opened else None))
        except BaseException:
            _close_quietly(*reversed(opened))
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
            _close_quietly(transport or sock)
            raise
        finally:
            if agent is not None:
                agent.close()
        return transport

    def _socket(self, hop: Hop, via: paramiko.Transport | None, where: str) -> socket.socket | paramiko.Channel:
        timeout = self.target.connect_timeout
        try:
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
            raise ConnectionFailed(f"cannot connect to {where}{through}: {_why(exc)}") from exc

    def _handshake(self, transport: paramiko.Transport, hop: Hop, where: str) -> None:
        timeout = self.target.connect_timeout
        transport.banner_timeout = transport.handshake_timeout = timeout
        options = transport.get_security_options()
        options.ciphers = [c for c in CIPHERS if c in options.ciphers] + [
            c for c in options.ciphers if c not in CIPHERS]
        # Ask for the host key type known_hosts records (as OpenSSH does), else a server with
        # several host keys could present another one and look "changed".
        known_hosts = self.target.known_hosts or hop.known_hosts  # the preset's file wins over the config's
        recorded = {kind for kind, _ in recorded_keys(known_hosts_path(known_hosts), hop.hostname, hop.port)}
        known = [a for a in options.key_types if _key_family(a) in recorded]
        options.key_types = known + [a for a in options.key_types if a not in known]
        try:
            transport.start_client(timeout=timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionFailed(f"cannot connect to {where}: {_why(exc)}") from exc
        key = transport.get_remote_server_key()
        check_host_key(known_hosts, hop.hostname, hop.port, key.get_name(), key.asbytes())

    def _credentials(self, hop: Hop) -> tuple[list[tuple[str, paramiko.PKey]], paramiko.Agent | None]:
        """(label, key) to offer, in order: key files (the agent's copy when it holds one), then the agent."""
        explicit = hop.key_files or self.target.key_files
        files = [str(Path(k).expanduser()) for k in explicit or DEFAULT_KEYS]
        agent, agent_keys = _open_agent() if self.target.use_agent else (None, [])
        found: list[tuple[str, paramiko.PKey]] = []
        for path in files:
            held = _agent_key_for(path, agent_keys)
            if held is not None:  # no passphrase needed: the agent signs
                agent_keys.remove(held)
                found.append((f"{path} (ssh-agent)", held))
            elif (key := self._key(path, bool(explicit))) is not None:
                found.append((path, key))
        found += [(f"ssh-agent key {k.comment or k.get_name()}", k) for k in agent_keys]
        return found, agent

    def _key(self, path: str, explicit: bool) -> paramiko.PKey | None:
        if path not in self._keys:
            if not explicit and not Path(path).exists():
                return None
            key = _load_key(path, self.prompts if explicit else None)
            if key is None:
                return None
            self._keys[path] = key
        return self._keys[path]

    def _authenticate(self, transport: paramiko.Transport, hop: Hop, keys: list[tuple[str, paramiko.PKey]],
                      where: str) -> None:
        transport.auth_timeout = self.target.connect_timeout
        offered: list[str] = []
        try:
            allowed = _methods(transport, hop.user)
            if "publickey" in allowed and not transport.is_authenticated():
                allowed = _publickey(transport, hop.user, keys, offered) or allowed
            if "keyboard-interactive" in allowed and not transport.is_authenticated():
                offered.append("keyboard-interactive")
                self._interactive(transport, hop.user)
        except paramiko.AuthenticationException as exc:
            raise AuthenticationFailed(f"{where} refused the login ({_why(exc)}); "
                                       f"offered: {_offered(offered, keys)}") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionFailed(f"cannot log in to {where}: {_why(exc)}") from exc
        if not transport.is_authenticated():
            raise AuthenticationFailed(f"{where} refused the login (it accepts: {', '.join(allowed) or '-'}); "
                                       f"offered: {_offered(offered, keys)}")

    def _interactive(self, transport: paramiko.Transport, user: str) -> None:
        """Keyboard-interactive (one-time codes): each round of prompts goes to the user's callback."""

        declined = threading.Event()

        def answer(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
            if not prompts:
                return []  # servers send an empty round after the code: answer it without asking
            answers = self.prompts.kbdint(title, instructions, list(prompts))
            if answers is None:
                declined.set()
                raise _Declined()
            return list(answers)

        transport.auth_timeout = None  # a person is typing; sshd's LoginGraceTime still bounds it
        try:
            transport.auth_interactive(user, answer)
        except paramiko.AuthenticationException as exc:
            if declined.is_set():
                raise paramiko.AuthenticationException("no answer to the server's prompt") from exc
            raise

    def _detach(self) -> list[Any]:
        """Forget the connection; returns what to close (innermost first)."""
        things: list[Any] = [*self._idle, *self._channels, *reversed(self._hops)]
        self._idle, self._hops = [], []
        self._channels = set()
        return things

    async def close(self) -> None:
        for forward in list(self._forwards):
            await forward.close()
        async with self._lock:
            things = self._detach()
        if things:
            await _in_thread(_close_quietly, *things)

    async def _connection(self) -> list[paramiko.Transport]:
        await self.connect()
        return self._hops

    def _lost(self, exc: BaseException, hops: list[paramiko.Transport]) -> ConnectionLost:
        """Forget the broken chain (unless a reconnect already replaced it); the next call connects again."""
        if hops is self._hops:
            _close_later(self._detach())
        return ConnectionLost(f"the connection to {self.target.host} dropped: {_why(exc)}")

    @contextlib.contextmanager
    def _mapped(self, hops: list[paramiko.Transport]) -> Iterator[None]:
        """paramiko and socket errors during an operation as our errors; SFTP status errors pass."""
        try:
            yield
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not all(t.is_active() for t in hops) or isinstance(exc, EOFError | ConnectionError) or (
                    isinstance(exc, paramiko.SSHException) and not isinstance(exc, paramiko.ChannelException)):
                raise self._lost(exc, hops) from exc
            if isinstance(exc, paramiko.ChannelException):
                raise ConnectionFailed(f"{self.target.host} refused a channel: {_why(exc)}") from exc
            raise  # FileNotFoundError, PermissionError, TimeoutError...: the connection is fine

    @contextlib.asynccontextmanager
    async def _sftp(self) -> AsyncIterator[_Session]:
        """An SFTP session of its own for one operation (paramiko's client is not safe to share
        between threads); sessions are kept for reuse while the connection lives."""
        hops = await self._connection()
        with self._mapped(hops):
            while self._idle and self._idle[-1].client.get_channel().closed:
                _close_later([self._idle.pop()])
            session = self._idle.pop() if self._idle else await _in_thread(
                _open_sftp, hops[-1], orphan=_close_quietly)
            reuse = False
            try:
                yield session
                reuse = True
            except OSError as exc:
                # A status reply (no such file...) leaves the session usable; anything else may not.
                reuse = exc.errno is not None and not isinstance(exc, ConnectionError | TimeoutError)
                raise
            finally:
                if reuse and hops is self._hops and len(self._idle) < SFTP_IDLE:
                    self._idle.append(session)
                else:
                    _close_later([session])

    # ---- primitives ---------------------------------------------------------------------------

    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None
                    ) -> tuple[int | None, bytes, bytes]:
        hops = await self._connection()
        with self._mapped(hops):
            chan = await _in_thread(hops[-1].open_session, orphan=_close_quietly)
            try:
                return await _in_thread(_run, chan, command, stdin, timeout)
            except BaseException:
                _close_later([chan])  # ends the thread too (timeout, cancel, error)
                raise

    async def _open_stream(self, command: str) -> StreamHandle:
        hops = await self._connection()
        with self._mapped(hops):
            chan = await _in_thread(_start, hops[-1], command, orphan=_close_quietly)
        self._channels.add(chan)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamLine | None] = asyncio.Queue()
        status: asyncio.Future[int] = loop.create_future()
        # Read the outcome even when nobody waits (a cancelled stream): no "never retrieved" warning.
        status.add_done_callback(lambda f: f.cancelled() or f.exception())
        threading.Thread(target=_pump_lines, args=(chan, loop, queue, status), name="braas-paramiko-stream",
                         daemon=True).start()

        async def lines() -> AsyncIterator[StreamLine]:
            while (item := await queue.get()) is not None:
                yield item

        async def wait() -> int | None:
            with self._mapped(hops):
                return await status

        async def close() -> None:
            self._channels.discard(chan)
            _close_later([chan])

        return StreamHandle(lines(), wait, close)

    async def _size(self, remote: str) -> int | None:
        async with self._sftp() as sftp:
            try:
                attrs = await _in_thread(sftp.client.stat, remote)
            except FileNotFoundError:
                return None
        return attrs.st_size

    async def _send(self, local: Path, remote: str, offset: int, progress: Progress | None) -> None:
        report = _Reporter(progress)
        if offset == 0 and await self._scp(_scp_send, local, remote, report):
            return
        async with self._sftp() as sftp:  # a cancel closes the session, which ends the thread
            await _in_thread(_send_file, sftp, local, remote, offset, report)

    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        report = _Reporter(progress)
        if offset == 0 and await self._scp(_scp_receive, remote, local, report):
            return
        async with self._sftp() as sftp:
            await _in_thread(_receive_file, sftp, remote, local, offset, report)

    async def _scp(self, fn: Callable[..., None], *args: Any) -> bool:
        """A whole-file copy over scp; False when scp refused it (no scp there, a name it cannot carry,
        no such file...), so the caller repeats it over SFTP, whose errors say precisely what is wrong."""
        hops = await self._connection()
        with self._mapped(hops):
            chan = await _in_thread(hops[-1].open_session, orphan=_close_quietly)
            try:
                await _in_thread(fn, chan, *args, self._stall_timeout)
            except SCPException as exc:
                if not all(t.is_active() for t in hops):
                    raise self._lost(exc, hops) from exc
                return False
            except BaseException:
                _close_later([chan])  # ends the worker thread on a cancel
                raise
        return True

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        async with self._sftp() as sftp:
            try:
                entries = await _in_thread(sftp.client.listdir_attr, remote)
            except FileNotFoundError:
                return []
        return [
            RemoteEntry(e.filename, e.st_size or 0, stat.S_ISDIR(e.st_mode))
            for e in entries
            if e.filename not in (".", "..") and e.st_mode is not None
            and (stat.S_ISREG(e.st_mode) or stat.S_ISDIR(e.st_mode))
        ]

    async def forward(self, remote_host: str, remote_port: int, local_port: int | None = None,
                      local_path: str | None = None) -> Forward:
        await self._connection()  # fail here, not on the first connection through the tunnel
        if local_path:
            unlink_stale_socket(local_path)
        listener = socket.socket(socket.AF_UNIX if local_path else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if local_path:
                listener.bind(local_path)
                make_private_socket(local_path)
            else:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", local_port or 0))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        forward = ParamikoForward(self, listener, remote_host, remote_port, local_path)
        self._forwards.add(forward)
        return forward

    async def hold_interactive(self) -> Release | None:
        hops = await self._connection()

        def open_session() -> paramiko.Channel:
            channel = hops[-1].open_session(timeout=self.target.connect_timeout)
            channel.get_pty(term="dumb")
            channel.exec_command(HOLD_COMMAND)
            return channel

        with self._mapped(hops):
            channel = await _in_thread(open_session, orphan=_close_quietly)

        async def release() -> None:
            await _in_thread(_close_quietly, channel)

        return release

    async def _open_tunnel(self, remote_host: str, remote_port: int, peer: tuple[str, int]) -> paramiko.Channel:
        """A direct-tcpip channel from the last hop; reconnects first if the connection dropped."""
        hops = await self._connection()
        with self._mapped(hops):
            return await _in_thread(hops[-1].open_channel, "direct-tcpip", (remote_host, remote_port), peer,
                                    None, None, self.target.connect_timeout, orphan=_close_quietly)


def _offered(offered: list[str], keys: list[tuple[str, paramiko.PKey]]) -> str:
    if offered:
        return ", ".join(offered)
    return "nothing the server accepts" if keys else "nothing (no key configured or found, no agent key)"


def _methods(transport: paramiko.Transport, user: str) -> list[str]:
    """The methods the server accepts, from a "none" attempt (what OpenSSH does first, too)."""
    try:
        transport.auth_none(user)
    except paramiko.BadAuthenticationType as exc:
        return list(exc.allowed_types)
    except paramiko.AuthenticationException:
        return ["publickey", "keyboard-interactive"]
    return []  # "none" was enough


def _publickey(transport: paramiko.Transport, user: str, keys: list[tuple[str, paramiko.PKey]],
               offered: list[str]) -> list[str]:
    """Offer each key; returns the methods still required after a partial success, else []."""
    for label, key in keys:
        offered.append(label)
        try:
            remaining = transport.auth_publickey(user, key)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        except paramiko.AuthenticationException:
            continue
        return list(remaining)  # [] when fully authenticated; e.g. ["keyboard-interactive"] when partial
    return []
