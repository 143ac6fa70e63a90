"""Port forwards: `-L` listeners added to the master (`ssh -O forward`), or an `ssh -N -L` process each
where there is no master (Windows)."""

from __future__ import annotations

import asyncio
import tempfile

from ...errors import ConnectionFailed, ConnectionLost
from ..base import Forward, make_private_socket, unlink_stale_socket
from .client import Client
from .connect import Connecting
from .diagnose import tail
from .options import opt
from .process import free_port, port_is_free, reap

FORWARD_TRIES = 5
FORWARD_READY = "braas-hpc-forward-ready"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Listener(Forward):
    """What every forward of this back end knows: its transport and both ends."""

    def __init__(self, transport: Client, local_port: int, remote_host: str, remote_port: int,
                 local_path: str | None) -> None:
        self._transport = transport
        self.local_path = local_path
        self.local_port = local_port
        self.remote_host = remote_host
        self.remote_port = remote_port


class _MuxForward(_Listener):
    """A -L listener owned by the master connection; closing it cancels just that listener."""

    def __init__(self, transport: Client, spec: str, local_port: int, remote_host: str,
                 remote_port: int, local_path: str | None = None) -> None:
        super().__init__(transport, local_port, remote_host, remote_port, local_path)
        self._spec = spec

    async def close(self) -> None:
        if self in self._transport._forwards:
            self._transport._forwards.remove(self)
            await self._transport._control("cancel", "-L", self._spec)  # fails quietly when the master is gone

    async def alive(self) -> bool:
        # The listener lives in the master: a master that died took it along.
        return self in self._transport._forwards and await self._transport._master_alive()


class _ProcessForward(_Listener):
    """Without multiplexing: a dedicated `ssh -N -L` process per forward."""

    def __init__(self, transport: Client, process: asyncio.subprocess.Process, local_port: int,
                 remote_host: str, remote_port: int, local_path: str | None = None) -> None:
        super().__init__(transport, local_port, remote_host, remote_port, local_path)
        self._process = process

    async def close(self) -> None:
        if self in self._transport._forwards:
            self._transport._forwards.remove(self)
        await reap(self._process)

    async def alive(self) -> bool:
        return self in self._transport._forwards and self._process.returncode is None


class Forwards(Connecting):
    """forward(): a TCP port (ssh -L cannot pick a free one itself, so we do) or a private unix socket."""

    async def forward(self, remote_host: str, remote_port: int, local_port: int | None = None,
                      local_path: str | None = None) -> Forward:
        await self.connect()
        if local_path:
            return await self._path_forward(local_path, remote_host, remote_port)
        last = ""
        for _ in range(1 if local_port else FORWARD_TRIES):
            port = local_port or free_port()  # ssh -L cannot pick a port itself
            if not port_is_free(port):
                if local_port:
                    raise ConnectionFailed(f"127.0.0.1:{port} is already in use")
                continue
            spec = f"127.0.0.1:{port}:{_bracket(remote_host)}:{remote_port}"
            open_forward = self._mux_forward if self._mux else self._process_forward
            forward = await open_forward(spec, port, remote_host, remote_port)
            if isinstance(forward, Forward):
                self._forwards.append(forward)
                return forward
            last = forward  # someone took the port in between: try another one
        raise ConnectionFailed(f"cannot listen on 127.0.0.1 for a tunnel to {remote_host}:{remote_port}:\n"
                               f"{tail(last)}")

    async def _path_forward(self, path: str, remote_host: str, remote_port: int) -> Forward:
        """`-L PATH:HOST:PORT`; ssh makes the socket with StreamLocalBindMask (0177 unless configured
        otherwise, so it is set again after), the old one is unlinked first."""
        if ":" in path or any(c.isspace() for c in path):
            raise ConnectionFailed(f"a tunnel socket path for ssh -L cannot hold ':' or spaces: {path!r}")
        unlink_stale_socket(path)
        spec = f"{path}:{_bracket(remote_host)}:{remote_port}"
        open_forward = self._mux_forward if self._mux else self._process_forward
        forward = await open_forward(spec, 0, remote_host, remote_port, path)
        if not isinstance(forward, Forward):
            raise ConnectionFailed(f"cannot listen on {path} for a tunnel to {remote_host}:{remote_port}:\n"
                                   f"{tail(forward)}")
        make_private_socket(path)
        self._forwards.append(forward)
        return forward

    async def _mux_forward(self, spec: str, port: int, remote_host: str, remote_port: int,
                           path: str | None = None) -> Forward | str:
        status, _, err = await self._control("forward", "-L", spec)
        if status == 0:
            return _MuxForward(self, spec, port, remote_host, remote_port, path)
        if not await self._master_alive():
            self._up = False
            raise ConnectionLost(f"the connection to {self.target.host} dropped:\n{tail(err)}")
        return err

    async def _process_forward(self, spec: str, port: int, remote_host: str, remote_port: int,
                               path: str | None = None) -> Forward | str:
        # LocalCommand runs once the listener is up (ExitOnForwardFailure ends ssh otherwise).
        argv = self._client_argv(session=False)
        owner_only = [*opt("StreamLocalBindMask", "0177"), *opt("StreamLocalBindUnlink", "yes")] if path else []
        argv[-2:-2] = [*opt("ExitOnForwardFailure", "yes"), *opt("PermitLocalCommand", "yes"), *owner_only,
                       *opt("LocalCommand", f"echo {FORWARD_READY}"), "-N", "-L", spec]
        # stderr to a file: ssh logs every refused tunnel connection, and an unread pipe would fill up.
        with tempfile.TemporaryFile() as log:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log, env=self._env())
            assert process.stdout is not None
            try:
                line = await asyncio.wait_for(process.stdout.readline(), self.target.connect_timeout + 30)
            except BaseException:
                await reap(process)
                raise
            if FORWARD_READY.encode() in line:
                return _ProcessForward(self, process, port, remote_host, remote_port, path)
            await reap(process)
            log.seek(0)
            return log.read()[-16384:].decode(errors="replace")
