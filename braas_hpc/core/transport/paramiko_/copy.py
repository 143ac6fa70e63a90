"""File copies: whole files over the scp protocol, resumed ones (and what scp refuses) over SFTP.

The copies run on worker threads and report progress through the shared copy-progress bridge.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY
from scp import SCPClient, SCPException

from ...errors import TransferError
from ..base import Progress
from ..copy_progress import CopyProgress
from .channels import DRAIN, MAX_PACKET, WINDOW
from .connect import Connecting
from .threads import close_later, close_quietly, in_thread

# Whole files go over the scp protocol (the `scp` package on this connection); 200 MB on loopback
# (median of 3, MB/s put/get): scp package 279/377, paramiko SFTP 165/232, OpenSSH scp 146/200.
# SFTP serves resumed transfers (scp cannot start mid-file) and servers where scp fails.
SCP_SEND_BLOCK = 256 * 1024  # above the package's 16 KiB: faster uploads; Channel.sendall copies larger ones
SFTP_REQUEST = 32 * 1024  # per SFTP read/write request when the server does not state its limits
SFTP_REQUEST_MAX = 255 * 1024  # OpenSSH's limit; fewer requests cut paramiko's per-request cost (2.5x downloads)
SFTP_PREFETCH = 64  # outstanding read requests while downloading
SFTP_IDLE = 4  # SFTP sessions kept open for reuse
FILE_BLOCK = 1024 * 1024  # local read/write size


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


def _scp_path(remote: str) -> str:
    return "./" + remote if remote.startswith("-") else remote  # else scp takes it for an option


def _scp_send(chan: paramiko.Channel, local: Path, remote: str, report: CopyProgress, timeout: float) -> None:
    total = local.stat().st_size
    client = SCPClient(chan.get_transport(), buff_size=SCP_SEND_BLOCK, socket_timeout=timeout,
                       progress=lambda _name, _size, sent: report(sent, total))
    client.channel = chan  # opened by the caller, who closes it on cancel
    with client:
        client.put(str(local), _scp_path(remote))


def _scp_receive(chan: paramiko.Channel, remote: str, local: Path, report: CopyProgress, timeout: float) -> None:
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


def _send_file(session: _Session, local: Path, remote: str, offset: int, report: CopyProgress) -> None:
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


def _receive_file(session: _Session, remote: str, local: Path, offset: int, report: CopyProgress) -> None:
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


class Copies(Connecting):
    """_size, _send and _receive: the transfer primitives base.Transport builds put/get on."""

    @contextlib.asynccontextmanager
    async def _sftp(self) -> AsyncIterator[_Session]:
        """An SFTP session of its own for one operation (paramiko's client is not safe to share
        between threads); sessions are kept for reuse while the connection lives."""
        hops = await self._connection()
        with self._mapped(hops):
            while self._idle and self._idle[-1].client.get_channel().closed:
                close_later([self._idle.pop()])
            session = self._idle.pop() if self._idle else await in_thread(
                _open_sftp, hops[-1], orphan=close_quietly)
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
                    close_later([session])

    async def _size(self, remote: str) -> int | None:
        async with self._sftp() as sftp:
            try:
                attrs = await in_thread(sftp.client.stat, remote)
            except FileNotFoundError:
                return None
        return attrs.st_size

    async def _send(self, local: Path, remote: str, offset: int, progress: Progress | None) -> None:
        report = CopyProgress(progress)
        if offset == 0 and await self._scp(_scp_send, local, remote, report):
            return
        async with self._sftp() as sftp:  # a cancel closes the session, which ends the thread
            await in_thread(_send_file, sftp, local, remote, offset, report)

    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        report = CopyProgress(progress)
        if offset == 0 and await self._scp(_scp_receive, remote, local, report):
            return
        async with self._sftp() as sftp:
            await in_thread(_receive_file, sftp, remote, local, offset, report)

    async def _scp(self, fn: Callable[..., None], *args: Any) -> bool:
        """A whole-file copy over scp; False when scp refused it (no scp there, a name it cannot carry,
        no such file...), so the caller repeats it over SFTP, whose errors say precisely what is wrong."""
        hops = await self._connection()
        with self._mapped(hops):
            chan = await in_thread(hops[-1].open_session, orphan=close_quietly)
            try:
                await in_thread(fn, chan, *args, self._stall_timeout)
            except SCPException as exc:
                if not all(t.is_active() for t in hops):
                    raise self._lost(exc, hops) from exc
                return False
            except BaseException:
                close_later([chan])  # ends the worker thread on a cancel
                raise
        return True
