"""connect() and close(): one master connection per transport (`ssh -f -N`), or a probe without multiplexing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

from ...errors import ConnectionFailed
from .auth import Asking
from .diagnose import Diagnosing, tail
from .options import opt, pct, proxy_command, ssh_options
from .process import WINDOWS, reap, run_local

CONTROL_PERSIST_S = 60  # an abandoned master (crash, no close()) ends this long after its last session


class Connecting(Diagnosing, Asking):
    """connect() and close(): one master per transport (ssh -f -N), or a probe without multiplexing."""

    async def connect(self) -> None:
        async with self._lock:
            if self._up and (not self._mux or os.path.exists(self._control_path)):
                return
            self._up = False
            if self._mux and await self._master_alive():
                self._up = True
                return
            if self.target.ssh_config not in (None, "none") and not Path(self.target.ssh_config).expanduser().is_file():
                raise ConnectionFailed(f"ssh config file not found: {self.target.ssh_config}")
            info = await self._resolve()
            self._proxy = self._jump_options(info)
            if self._mux:
                await self._start_master(info)
            else:
                await self._probe(info)
            self._up = True

    async def _resolve(self) -> dict[str, str]:
        """The effective settings for the target as OpenSSH computes them (`ssh -G`)."""
        argv = [self._ssh(), *ssh_options(self.target, batch=True), "-G", "--", self.target.host]
        status, out, err = await run_local(argv, self._env())
        if status != 0:
            raise ConnectionFailed(f"ssh cannot use the settings for {self.target.host}:\n{tail(err)}")
        info: dict[str, str] = {}
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            info.setdefault(key.lower(), value.strip())  # repeated keys (identityfile): the first is enough
        return info

    def _jump_options(self, info: dict[str, str]) -> list[str]:
        jumps = self.target.proxy_jump or info.get("proxyjump", "")
        if not jumps or jumps == "none":
            return []
        if WINDOWS:  # its ProxyCommand is not run by a POSIX shell: OpenSSH's own -J
            return opt("ProxyJump", jumps)
        log = self._jump_log if self._mux else None
        command = proxy_command(self._ssh(), self.target, jumps, batch=not self._can_prompt(), log=log)
        return opt("ProxyCommand", command)

    async def _start_master(self, info: dict[str, str]) -> None:
        self._tried = set()
        self._prompt_error = None
        argv = [self._ssh(), *ssh_options(self.target, batch=not self._can_prompt()),
                *opt("ControlMaster", "auto"), *opt("ControlPath", pct(self._control_path)),
                *opt("ControlPersist", str(CONTROL_PERSIST_S)), *opt("ClearAllForwardings", "yes"), *self._proxy,
                "-f", "-N", "--", self.target.host]
        jump_log = Path(self._jump_log)
        jump_log.unlink(missing_ok=True)
        async with self._askpass() as extra:
            # stderr to a file, not a pipe: the backgrounded master and its ProxyCommand keep the
            # descriptor, so a pipe would never reach end of file.
            with tempfile.TemporaryFile() as log:
                process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log,
                    env=self._env(extra), start_new_session=True)  # no terminal: every question goes to askpass
                try:
                    status = await process.wait()  # -f: returns once authenticated (or failed)
                except BaseException:
                    await reap(process, group=True)
                    raise
                log.seek(0)
                stderr = log.read()[-16384:].decode(errors="replace")
        with contextlib.suppress(OSError):
            stderr = jump_log.read_text(errors="replace")[-16384:] + stderr  # what the jump hosts said, first
            jump_log.unlink()
        if self._prompt_error is not None:
            raise self._prompt_error
        if status != 0:
            raise await self._connect_error(stderr, info)
        if not await self._master_alive():
            raise ConnectionFailed(f"ssh to {self._where(info)} started but its control socket did not appear:\n"
                                   f"{tail(stderr)}")

    async def _probe(self, info: dict[str, str]) -> None:
        status, _, err = await self._run_client("exit 0", None, None)
        if status != 0:
            raise await self._connect_error(err.decode(errors="replace"), info)

    async def close(self) -> None:
        async with self._lock:
            for forward in list(self._forwards):
                await forward.close()
            await self._shell.close()
            if self._mux and self._dir is not None and os.path.exists(self._control_path):
                await self._control("exit")
            self._up = False
            if self._dir is not None:
                (self._dir / f"{self._tag}.askpass").unlink(missing_ok=True)
