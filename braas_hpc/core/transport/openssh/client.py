"""The state every part of the OpenSSH back end shares, and the ssh calls they all make through the master."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from pathlib import Path

from ...errors import ConnectionFailed
from ..base import Forward, NoPrompts, Prompts, SSHTarget, Transport
from . import askpass
from .options import opt, pct, ssh_options
from .process import WINDOWS, private_dir, reap, run_local
from .shell import remote_shell

# What a multiplexed call prints when there is no master: its ProxyCommand (see _client_argv). The inner
# sh keeps the proxy's stdout open until the marker is written; with `exec echo ... >&2` ssh would see
# end of file first and could end the proxy before it wrote anything.
NO_MASTER = "braas-hpc-no-master"
_NO_MASTER_PROXY = f"sh -c 'echo {NO_MASTER} >&2'"


class Client(Transport):
    name = "openssh"

    def __init__(self, target: SSHTarget, prompts: Prompts | None = None) -> None:
        if not target.host or target.host.startswith("-") or any(c.isspace() or ord(c) < 32 for c in target.host):
            raise ConnectionFailed(f"not a valid host name: {target.host!r}")
        self.target = target
        self.prompts = prompts or NoPrompts()
        self._mux = not WINDOWS  # ControlPath needs unix sockets; Windows gets one connection per call
        self._lock = asyncio.Lock()
        self._up = False
        self._tag = secrets.token_hex(6)  # one master per transport: close() never cuts another one's
        self._dir: Path | None = None
        self._program: str | None = None
        self._proxy: list[str] = []  # ProxyCommand/ProxyJump options for jump hosts, set by connect()
        self._forwards: list[Forward] = []
        self._passphrases: dict[str, str] = {}  # in memory only, so a reconnect need not ask again
        self._tried: set[str] = set()  # keys whose remembered passphrase this connect already offered
        self._prompt_error: BaseException | None = None
        self._shell = remote_shell(lambda: (self._client_argv(), self._env()))  # fast path for short commands

    def _ssh(self) -> str:
        if self._program is None:
            found = shutil.which("ssh")
            if found is None:
                raise ConnectionFailed("the OpenSSH client `ssh` is not installed or not on PATH; install it or "
                                       "choose the asyncssh back end")
            self._program = found
        return self._program

    @property
    def _control_path(self) -> str:
        if self._dir is None:
            self._dir = private_dir()
        return str(self._dir / self._tag)

    @property
    def _jump_log(self) -> str:
        return f"{self._control_path}.jump.log"

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # A user's own askpass (e.g. a desktop one) must not answer for us; ours is added when wanted.
        drop = ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", askpass.SOCKET_ENV)
        env = {k: v for k, v in os.environ.items() if k not in drop}
        if not WINDOWS:
            env["SHELL"] = "/bin/sh"  # ssh runs ProxyCommand with $SHELL; ours is quoted for sh
        return {**env, **(extra or {})}

    def _can_prompt(self) -> bool:
        return self._mux and not isinstance(self.prompts, NoPrompts)

    def _client_argv(self, *, session: bool = True) -> list[str]:
        """ssh up to the destination, for one call. Calls never authenticate on their own (BatchMode)."""
        argv = [self._ssh(), *ssh_options(self.target, batch=True), *opt("ControlMaster", "no")]
        if self._mux:
            # No master: fail at once with a marker rather than open a second connection.
            argv += [*opt("ControlPath", pct(self._control_path)), *opt("ProxyCommand", _NO_MASTER_PROXY)]
        else:
            argv += [*opt("ControlPath", "none"), *self._proxy]
        if session:  # a config's forwards, RemoteCommand or RequestTTY would break a plain command
            argv += [*opt("ClearAllForwardings", "yes"), *opt("RemoteCommand", "none"), "-T"]
        return [*argv, "--", self.target.host]

    async def _control(self, command: str, *args: str) -> tuple[int | None, str, str]:
        """`ssh -O command` to our master."""
        argv = [self._ssh(), *ssh_options(self.target, batch=True), *opt("ControlPath", pct(self._control_path)),
                "-O", command, *args, "--", self.target.host]
        return await run_local(argv, self._env())

    async def _master_alive(self) -> bool:
        return os.path.exists(self._control_path) and (await self._control("check"))[0] == 0

    async def _run_client(self, command: str, stdin: bytes | None, timeout: float | None
                          ) -> tuple[int | None, bytes, bytes]:
        process = await asyncio.create_subprocess_exec(
            *self._client_argv(), command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self._env())
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
        except BaseException:
            await reap(process)
            raise
        return process.returncode, out, err
