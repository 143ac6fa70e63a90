"""The system OpenSSH back end: the user's own `ssh`, with one master connection reused by every call.

`connect()` starts a ControlMaster in the background (`ssh -f -N`); commands, streams, transfers and
forwards then travel over it as multiplexed sessions, so a passphrase or one-time code is asked
once per connection. ssh asks those through SSH_ASKPASS: a tiny helper (askpass.py) hands the
question over a private unix socket to this process, which asks the user's Prompts object.

OpenSSH reads ~/.ssh/config itself (we never interpret it), except that a ProxyJump is done with our
own ProxyCommand so the jump hosts get the same known_hosts, keys and options as the target.
Host key failures are explained like asyncssh's: ssh-keyscan fetches the key the server offers
and hostkeys.check_host_key raises HostKeyUnknown/HostKeyChanged with its fingerprint.

On Windows (no unix sockets for ControlPath) every call is its own connection, without prompts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionLost,
    HostKeyError,
    RemoteCommandError,
    TransferError,
)
from . import askpass
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
    make_private_socket,
    merge_lines,
    remote_line,
    unlink_stale_socket,
    write_argv,
)
from .hostkeys import check_host_key, known_hosts_path, parse_public_key, recorded_keys
from .openssh_session import RemoteShell, SessionLost

T = TypeVar("T")
WINDOWS = sys.platform == "win32"
CONTROL_PERSIST_S = 60  # an abandoned master (crash, no close()) ends this long after its last session
SERVER_ALIVE_COUNT = 3
COPY_BLOCK = 1 << 20
PIPE_SIZE = 1 << 20
PROGRESS_STEP = 1 << 20  # a progress callback at most once per MiB (and at the end)
PROGRESS_WAIT_S = 60.0
_SPLICE = hasattr(os, "splice")
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
FORWARD_TRIES = 5
LOCAL_TIMEOUT = 30.0  # for local helpers: ssh -O, ssh -G, ssh-keyscan
STREAM_LINE_LIMIT = 8 << 20
# What a multiplexed call prints when there is no master: its ProxyCommand (see _client_argv). The inner
# sh keeps the proxy's stdout open until the marker is written; with `exec echo ... >&2` ssh would see
# end of file first and could end the proxy before it wrote anything.
NO_MASTER = "braas-hpc-no-master"
_NO_MASTER_PROXY = f"sh -c 'echo {NO_MASTER} >&2'"
# A multiplexed call never exchanges keys itself: these lines can only come from that stand-in proxy.
_NOT_STARTED = (NO_MASTER.encode(), b"kex_exchange_identification", b"ssh_exchange_identification")
FORWARD_READY = "braas-hpc-forward-ready"

_HOST_KEY_FAILURES = ("Host key verification failed", "host key is known for", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                      "has changed and you have requested strict checking")
_AUTH_FAILURES = ("Permission denied", "Too many authentication failures")
# Lines ssh itself writes when a session could not be set up or broke (as opposed to the command's stderr).
_SSH_SAYS = re.compile(r"^(ssh: |mux_client_|muxclient: |kex_exchange_identification: |client_loop: |channel \d+: |"
                       r"Control socket |Connection (to .* )?closed|Connection reset|Timeout, server |"
                       r"ssh_dispatch_run_fatal|packet_write_wait|Broken pipe|" + NO_MASTER + ")")
_PASSPHRASE_PROMPT = re.compile(r"Enter passphrase for key '(.*)':", re.S)
_PROMPT_WHO = re.compile(r"^\([^()\s]*@[^()\s]*\) ")  # OpenSSH prefixes kbdint prompts with "(user@host) "
_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")

# Remote helpers, each one command line via remote_line (umask 077); the path is always "$1".
_SIZE_SCRIPT = 'if [ -e "$1" ]; then exec stat -L -c %s -- "$1"; fi; echo missing'
# The size first (one line, for progress), then the bytes from offset $2.
_READ_SCRIPT = ('stat -L -c %s -- "$1" || exit; if [ "$2" -gt 0 ]; then exec tail -c "+$(($2 + 1))" -- "$1"; fi; '
                'exec cat -- "$1"')
_LIST_SCRIPT = '[ -e "$1" ] || exit 0; exec find -H "$@"'
_LIST_EXPR = ["-mindepth", "1", "-maxdepth", "1", "(", "-type", "f", "-o", "-type", "d", ")", "-printf", "%y %s %f\\0"]


# ---- options ------------------------------------------------------------------------------------


def _pct(value: str) -> str:
    """ssh expands %-tokens in paths (IdentityFile, UserKnownHostsFile, ControlPath, ProxyCommand)."""
    return value.replace("%", "%%")


def _cfg(value: str) -> str:
    """A value for `-o Key=value`: ssh splits it like a config line, so quote blanks, quotes and '#'."""
    if value and not any(c in value for c in ' \t"\'\\#'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _o(key: str, value: str) -> list[str]:
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
        opts += _o("Port", str(target.port))
    if not jump and target.user:
        opts += _o("User", _cfg(target.user))
    for key in target.key_files:
        opts += ["-i", _pct(str(Path(key).expanduser()))]
    if target.key_files:
        opts += _o("IdentitiesOnly", "yes")
    if not target.use_agent:
        opts += _o("IdentityAgent", "none")
    if target.known_hosts:  # None: what the config says, else ~/.ssh/known_hosts (OpenSSH's default)
        opts += _o("UserKnownHostsFile", _cfg(_pct(str(known_hosts_path(target.known_hosts)))))
    opts += _o("StrictHostKeyChecking", "yes")  # never a mode that trusts new keys itself: trust is the user's decision
    opts += _o("ConnectTimeout", str(max(1, math.ceil(target.connect_timeout))))
    opts += _o("ServerAliveInterval", str(max(0, math.ceil(target.keepalive_s))))
    opts += _o("ServerAliveCountMax", str(SERVER_ALIVE_COUNT))
    if batch:
        opts += _o("BatchMode", "yes")
    opts += _o("LogLevel", "ERROR")
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
    argv = [ssh, *ssh_options(target, batch=batch, jump=True), *_o("ControlMaster", "no"), *_o("ControlPath", "none")]
    if log:
        argv += ["-E", log]
    if earlier:
        argv += _o("ProxyCommand", proxy_command(ssh, target, ",".join(earlier), batch=batch, log=log))
    if user:
        argv += _o("User", _cfg(user))
    if port:
        argv += _o("Port", port)
    return f"{_pct(shlex.join(argv))} -W '[%h]:%p' -- {_pct(shlex.quote(host))}"


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no error output)"


def _ssh_said(stderr: str) -> bool:
    last = stderr.strip().splitlines()[-1:] or [""]
    return bool(_SSH_SAYS.match(last[0].strip())) or NO_MASTER in stderr


def _private_dir() -> Path:
    """/tmp/braas-ssh-UID, mode 0700: short (unix socket paths are limited to ~104 bytes) and ours alone."""
    path = Path(f"/tmp/braas-ssh-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # whatever the umask
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConnectionFailed(f"{path} must be a directory of this user with mode 0700 (it holds the ssh control "
                               "sockets); remove it and try again")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _key_type_order(algorithms: str) -> list[str]:
    """Key types in the order ssh prefers host key algorithms (certificates and security keys left out)."""
    order: list[str] = []
    for alg in algorithms.split(","):
        key_type = "ssh-rsa" if alg in _RSA_ALGORITHMS else alg
        if "-cert-" not in alg and not alg.startswith("sk-") and key_type not in order:
            order.append(key_type)
    return order


async def _reap(process: asyncio.subprocess.Process, group: bool = False) -> None:
    """End a local process we started (on error or cancel) without leaving a zombie."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            if group and not WINDOWS:
                os.killpg(process.pid, signal.SIGTERM)  # its ProxyCommand children too
            else:
                process.kill()
    with contextlib.suppress(Exception):
        await asyncio.shield(asyncio.wait_for(process.wait(), 10))


async def _run_local(argv: Sequence[str], env: dict[str, str], timeout: float = LOCAL_TIMEOUT
                     ) -> tuple[int | None, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        await _reap(process)
        raise
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# ---- file copies (worker threads) -------------------------------------------------------------


class _Reporter:
    """Progress from a copy thread, called on the event loop; the thread waits for it, so a callback
    sees (and may act on) the real position. At most once per PROGRESS_STEP, and at the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop, progress: Progress | None) -> None:
        self._loop = loop
        self._progress = progress
        self._last = -1

    def __call__(self, position: int, total: int, *, final: bool = False) -> None:
        progress = self._progress
        if progress is None or position == self._last or (not final and position - self._last < PROGRESS_STEP):
            return
        self._last = position
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def call() -> None:
            try:
                progress(position, total)
            except BaseException as exc:  # noqa: BLE001 - handed to the copy thread, which re-raises it
                future.set_exception(exc)
            else:
                future.set_result(None)

        self._loop.call_soon_threadsafe(call)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            future.result(timeout=PROGRESS_WAIT_S)


def _pipe() -> tuple[int, int]:
    reader, writer = os.pipe()
    with contextlib.suppress(AttributeError, OSError):
        import fcntl  # Linux: a bigger pipe means fewer wake-ups per MB

        fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return reader, writer


def _move(source: int, target: int, splice: bool) -> tuple[int, bool]:
    """Up to COPY_BLOCK bytes from one descriptor to another: splice (Linux, no copy through Python),
    else read/write. Returns (bytes moved, whether splice still works); 0 bytes means end of input."""
    if splice:
        try:
            return os.splice(source, target, COPY_BLOCK), True
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
    data = os.read(source, COPY_BLOCK)
    view = memoryview(data)
    while view:
        view = view[os.write(target, view):]
    return len(data), False


def _copy(source: int, target: int, position: int, total: int, report: _Reporter) -> int:
    """Move bytes until end of file, reporting progress (splice where the OS has it). Returns the
    position reached."""
    splice = _SPLICE
    while True:
        count, splice = _move(source, target, splice)
        if not count:
            break
        position += count
        report(position, total)
    report(position, total, final=True)
    return position


def _file_to_pipe(local: Path, offset: int, pipe: int, report: _Reporter, total: int) -> None:
    """Thread: local[offset:] into ssh's stdin. Owns `pipe` and closes it (end of file for the remote)."""
    try:
        source = os.open(local, os.O_RDONLY | _O_BINARY)
        try:
            os.lseek(source, offset, os.SEEK_SET)
            _copy(source, pipe, offset, total, report)
        finally:
            os.close(source)
    except BrokenPipeError:
        pass  # ssh ended early: its exit status says why
    finally:
        os.close(pipe)


def _pipe_to_file(pipe: int, local: Path, offset: int, report: _Reporter) -> tuple[int, int] | None:
    """Thread: read the size line, then write the rest into local at offset. Owns and closes `pipe`.

    Returns the remote file's size and the position the local file reached, or None when no size came
    (the remote command failed).
    """
    try:
        header = b""
        while not header.endswith(b"\n") and len(header) < 24:
            byte = os.read(pipe, 1)  # byte by byte: the file's data follows at once
            if not byte:
                break
            header += byte
        if not header.strip().isdigit():
            return None
        total = int(header)
        target = os.open(local, os.O_WRONLY | os.O_CREAT | _O_BINARY, 0o666)
        try:
            os.ftruncate(target, offset)
            os.lseek(target, offset, os.SEEK_SET)
            return total, _copy(pipe, target, offset, total, report)
        finally:
            os.close(target)
    finally:
        os.close(pipe)


# ---- forwards -----------------------------------------------------------------------------------


class _MuxForward(Forward):
    """A -L listener owned by the master connection; closing it cancels just that listener."""

    def __init__(self, transport: OpenSSHTransport, spec: str, local_port: int, remote_host: str,
                 remote_port: int, local_path: str | None = None) -> None:
        self._transport = transport
        self._spec = spec
        self.local_path = local_path
        self.local_port = local_port
        self.remote_host = remote_host
        self.remote_port = remote_port

    async def close(self) -> None:
        if self in self._transport._forwards:
            self._transport._forwards.remove(self)
            await self._transport._control("cancel", "-L", self._spec)  # fails quietly when the master is gone

    async def alive(self) -> bool:
        # The listener lives in the master: a master that died took it along.
        return self in self._transport._forwards and await self._transport._master_alive()


class _ProcessForward(Forward):
    """Without multiplexing: a dedicated `ssh -N -L` process per forward."""

    def __init__(self, transport: OpenSSHTransport, process: asyncio.subprocess.Process, local_port: int,
                 remote_host: str, remote_port: int, local_path: str | None = None) -> None:
        self._transport = transport
        self._process = process
        self.local_path = local_path
        self.local_port = local_port
        self.remote_host = remote_host
        self.remote_port = remote_port

    async def close(self) -> None:
        if self in self._transport._forwards:
            self._transport._forwards.remove(self)
        await _reap(self._process)

    async def alive(self) -> bool:
        return self in self._transport._forwards and self._process.returncode is None


# ---- the transport ------------------------------------------------------------------------------


class OpenSSHTransport(Transport):
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
        self._shell = RemoteShell(lambda: (self._client_argv(), self._env()))  # fast path for short commands

    # ---- plumbing -------------------------------------------------------------------------------

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
            self._dir = _private_dir()
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
        argv = [self._ssh(), *ssh_options(self.target, batch=True), *_o("ControlMaster", "no")]
        if self._mux:
            # No master: fail at once with a marker rather than open a second connection.
            argv += [*_o("ControlPath", _pct(self._control_path)), *_o("ProxyCommand", _NO_MASTER_PROXY)]
        else:
            argv += [*_o("ControlPath", "none"), *self._proxy]
        if session:  # a config's forwards, RemoteCommand or RequestTTY would break a plain command
            argv += [*_o("ClearAllForwardings", "yes"), *_o("RemoteCommand", "none"), "-T"]
        return [*argv, "--", self.target.host]

    async def _control(self, command: str, *args: str) -> tuple[int | None, str, str]:
        """`ssh -O command` to our master."""
        argv = [self._ssh(), *ssh_options(self.target, batch=True), *_o("ControlPath", _pct(self._control_path)),
                "-O", command, *args, "--", self.target.host]
        return await _run_local(argv, self._env())

    async def _master_alive(self) -> bool:
        return os.path.exists(self._control_path) and (await self._control("check"))[0] == 0

    async def _resolve(self) -> dict[str, str]:
        """The effective settings for the target as OpenSSH computes them (`ssh -G`)."""
        argv = [self._ssh(), *ssh_options(self.target, batch=True), "-G", "--", self.target.host]
        status, out, err = await _run_local(argv, self._env())
        if status != 0:
            raise ConnectionFailed(f"ssh cannot use the settings for {self.target.host}:\n{_tail(err)}")
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
            return _o("ProxyJump", jumps)
        log = self._jump_log if self._mux else None
        return _o("ProxyCommand", proxy_command(self._ssh(), self.target, jumps, batch=not self._can_prompt(), log=log))

    def _where(self, info: dict[str, str]) -> str:
        user = info.get("user") or self.target.user or "?"
        return f"{user}@{info.get('hostname', self.target.host)}:{info.get('port', self.target.port or 22)}"

    # ---- connection -----------------------------------------------------------------------------

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

    async def _start_master(self, info: dict[str, str]) -> None:
        self._tried = set()
        self._prompt_error = None
        argv = [self._ssh(), *ssh_options(self.target, batch=not self._can_prompt()),
                *_o("ControlMaster", "auto"), *_o("ControlPath", _pct(self._control_path)),
                *_o("ControlPersist", str(CONTROL_PERSIST_S)), *_o("ClearAllForwardings", "yes"), *self._proxy,
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
                    await _reap(process, group=True)
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
                                   f"{_tail(stderr)}")

    async def _probe(self, info: dict[str, str]) -> None:
        status, _, err = await self._run_client("exit 0", None, None)
        if status != 0:
            raise await self._connect_error(err.decode(errors="replace"), info)

    async def _connect_error(self, stderr: str, info: dict[str, str]) -> ConnectionFailed:
        where = self._where(info)
        if any(marker in stderr for marker in _HOST_KEY_FAILURES):
            if self._proxy or info.get("proxycommand", "none") != "none":
                # ssh-keyscan cannot go through a jump host: say what ssh said.
                return ConnectionFailed(f"a host key on the way to {where} was not accepted:\n{_tail(stderr)}")
            await self._explain_host_key(info)  # raises HostKeyUnknown/HostKeyChanged when it can tell
            return ConnectionFailed(f"the host key of {where} was not accepted:\n{_tail(stderr)}")
        if any(marker in stderr for marker in _AUTH_FAILURES):
            self._passphrases.clear()  # one of them may be the wrong one
            offered = ", ".join(self.target.key_files) or "ssh-agent and default keys"
            return AuthenticationFailed(f"{where} refused the login; offered: {offered}\n{_tail(stderr)}")
        return ConnectionFailed(f"cannot connect to {where}:\n{_tail(stderr)}")

    async def _explain_host_key(self, info: dict[str, str]) -> None:
        """Fetch the server's keys and let check_host_key raise the error the user can act on."""
        host, port = info.get("hostname", self.target.host), int(info.get("port", "22"))
        keyscan = shutil.which("ssh-keyscan")
        if keyscan is None:
            return
        timeout = max(1, math.ceil(self.target.connect_timeout))
        argv = [keyscan, "-p", str(port), "-t", "ed25519,ecdsa,rsa", "-T", str(timeout), "--", host]
        try:
            _, out, _ = await _run_local(argv, self._env(), timeout + 10)
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

    # ---- prompts (SSH_ASKPASS) ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _askpass(self) -> AsyncIterator[dict[str, str]]:
        """Serve ssh's questions while the master connects; yields the environment that routes them here."""
        if not self._can_prompt():
            yield {}
            return
        directory = Path(self._control_path).parent
        wrapper = directory / f"{self._tag}.askpass"
        python = shlex.quote(sys.executable or "python3")
        script = f'#!/bin/sh\nexec {python} -I -S {shlex.quote(askpass.__file__)} "$@"\n'
        temp = wrapper.with_suffix(".tmp")
        temp.write_text(script)
        os.chmod(temp, 0o700)
        temp.replace(wrapper)
        path = directory / f"{self._tag}.{secrets.token_hex(3)}.ask"
        server = await asyncio.start_unix_server(self._answer, path=str(path))
        try:
            os.chmod(path, 0o600)
            yield {"SSH_ASKPASS": str(wrapper), "SSH_ASKPASS_REQUIRE": "force", askpass.SOCKET_ENV: str(path)}
        finally:
            server.close()
            path.unlink(missing_ok=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer: str | None = None
        try:
            request = json.loads(await reader.read())  # the helper half-closes after its question
            answer = await self._ask(str(request.get("prompt", "")), str(request.get("kind", "")))
        except (ValueError, AttributeError, OSError):
            answer = None
        except Exception as exc:  # noqa: BLE001 - the user's Prompts failed: connect() re-raises it
            self._prompt_error = exc
        try:
            writer.write(json.dumps({"answer": answer}).encode())
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _ask(self, prompt: str, kind: str) -> str | None:
        if kind == "confirm":
            return None  # yes/no questions (trust a host, use a key) are never answered for the user
        found = _PASSPHRASE_PROMPT.match(prompt.strip())
        if found:
            key = self._key_named(found.group(1))
            if key in self._passphrases and key not in self._tried:
                self._tried.add(key)
                return self._passphrases[key]  # this transport's earlier connection: don't ask again
            self._tried.add(key)
            answer = await asyncio.to_thread(self.prompts.passphrase, key)
            if answer is None:
                self._passphrases.pop(key, None)
            else:
                self._passphrases[key] = answer
            return answer
        # Anything else is the server's keyboard-interactive question (a one-time code, a password).
        answers = await asyncio.to_thread(self.prompts.kbdint, "", "", [(_PROMPT_WHO.sub("", prompt, count=1), False)])
        return answers[0] if answers else None

    def _key_named(self, shown: str) -> str:
        """ssh shows at most 100 characters of the key's path: map it back to the configured file."""
        for key in (str(Path(k).expanduser()) for k in self.target.key_files):
            if key == shown or (len(shown) >= 100 and key.startswith(shown)):
                return key
        return shown

    # ---- calls over the master ------------------------------------------------------------------

    async def _run_client(self, command: str, stdin: bytes | None, timeout: float | None
                          ) -> tuple[int | None, bytes, bytes]:
        process = await asyncio.create_subprocess_exec(
            *self._client_argv(), command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self._env())
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
        except BaseException:
            await _reap(process)
            raise
        return process.returncode, out, err

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
                raise ConnectionLost(f"the connection to {self.target.host} dropped:\n{_tail(text)}")
            if _ssh_said(text):
                raise ConnectionFailed(f"ssh could not open a session on {self.target.host}:\n{_tail(text)}")
        elif _ssh_said(text):
            self._up = False
            raise ConnectionLost(f"the connection to {self.target.host} failed:\n{_tail(text)}")

    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None
                    ) -> tuple[int | None, bytes, bytes]:
        if stdin is None and self._mux and not self._shell.lock.locked():
            async with self._shell.lock:
                await self.connect()
                try:
                    return await self._shell.run(command, timeout)
                except SessionLost as lost:
                    if lost.sent and not await self._master_alive():
                        self._up = False
                        raise ConnectionLost(f"the connection to {self.target.host} dropped") from None
                    # Not sent (no master: reconnect below), or only the shell ended: run it as a call.
        for attempt in range(2):
            await self.connect()
            status, out, err = await self._run_client(command, stdin, timeout)
            if status == 255 and self._not_started(err) and attempt == 0:
                self._up = False  # the master ended (idle timeout, drop) before the command started: retry once
                continue
            if status == 255:
                await self._failed(err)
            return status, out, err
        raise AssertionError("unreachable")

    async def _open_stream(self, command: str) -> StreamHandle:
        await self.connect()
        process = await asyncio.create_subprocess_exec(
            *self._client_argv(), command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self._env(), limit=STREAM_LINE_LIMIT)
        errors: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        lines, stop = merge_lines(process.stdout, process.stderr,
                                  lambda line: errors.append(line.text) if line.stderr else None)

        async def wait() -> int | None:
            status = await process.wait()
            if status == 255:
                await self._failed("\n".join(errors[-10:]))
            return status

        async def close() -> None:
            stop()
            await _reap(process)  # ends the local ssh; the master then closes the session

        return StreamHandle(lines, wait, close)

    async def _size(self, remote: str) -> int | None:
        status, out, err = await self._exec(remote_line(["sh", "-c", _SIZE_SCRIPT, "sh", remote]), None, 120)
        text = out.decode(errors="replace").strip()
        if status == 0 and text == "missing":
            return None
        if status == 0 and re.fullmatch(r"[0-9]+", text):
            return int(text)
        raise RemoteCommandError(f"stat -- {remote}", status, text, err.decode(errors="replace"))

    async def _send(self, local: Path, remote: str, offset: int, progress: Progress | None) -> None:
        total = local.stat().st_size
        command = remote_line(write_argv(remote, offset))
        await self.connect()
        report = _Reporter(asyncio.get_running_loop(), progress)
        reader, writer = _pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._client_argv(), command, stdin=reader, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=self._env())
        except BaseException:
            os.close(writer)
            raise
        finally:
            os.close(reader)  # ssh has its own copy; the thread owns the writing end from here
        copy = asyncio.to_thread(_file_to_pipe, local, offset, writer, report, total)
        await self._transfer(process, copy, f"upload of {local} to {remote}")

    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        command = remote_line(["sh", "-c", _READ_SCRIPT, "sh", remote, str(offset)])
        await self.connect()
        report = _Reporter(asyncio.get_running_loop(), progress)
        reader, writer = _pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._client_argv(), command, stdin=asyncio.subprocess.DEVNULL, stdout=writer,
                stderr=asyncio.subprocess.PIPE, env=self._env())
        except BaseException:
            os.close(reader)
            raise
        finally:
            os.close(writer)
        copy = asyncio.to_thread(_pipe_to_file, reader, local, offset, report)
        sizes = await self._transfer(process, copy, f"download of {remote} to {local}")
        if sizes is None:
            raise TransferError(f"download of {remote} to {local} failed: the remote side sent no size")
        total, reached = sizes
        if reached < total:
            await self._short_read(remote, reached, total)

    async def _short_read(self, remote: str, reached: int, total: int) -> None:
        """The output ended before the size announced. Through a master, ssh passes on the command's exit
        status as soon as the server sends it, which can be before the last of its output: when the
        connection then drops, ssh exits 0 with the tail missing. A dead master says it was that."""
        if self._mux and not await self._master_alive():
            self._up = False  # the next call reconnects
            raise ConnectionLost(f"the connection to {self.target.host} dropped during the download of {remote} "
                                 f"(at byte {reached} of {total})")
        raise TransferError(f"download of {remote} ended at byte {reached} of {total}: the file shrank on the "
                            "cluster while it was read")

    async def _transfer(self, process: asyncio.subprocess.Process, copy: Coroutine[Any, Any, T], what: str) -> T:
        """Wait for a copy thread and its ssh; map ssh's failure. Cancelling ends ssh, which ends the thread."""
        assert process.stderr is not None
        errors = asyncio.create_task(process.stderr.read())
        task = asyncio.ensure_future(copy)
        try:
            result = await task  # all bytes moved, or the pipe broke because ssh ended
            status = await process.wait()
            stderr = await errors
        except BaseException:
            errors.cancel()
            task.add_done_callback(lambda done: done.cancelled() or done.exception())  # no "never retrieved"
            await _reap(process)
            raise
        if status == 255:
            await self._failed(stderr)
        if status != 0:
            raise TransferError(f"{what} failed:\n{_tail(stderr.decode(errors='replace'))}")
        return result

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        path = remote if remote.startswith("/") else f"./{remote}"  # find reads "-x" or "!" as an expression
        status, out, err = await self._exec(remote_line(["sh", "-c", _LIST_SCRIPT, "sh", path, *_LIST_EXPR]),
                                            None, 300)
        if status != 0:
            raise RemoteCommandError(f"find {remote}", status, "", err.decode(errors="replace"))
        entries = []
        for record in out.split(b"\0"):
            kind, _, rest = record.partition(b" ")
            size, _, name = rest.partition(b" ")
            if kind in (b"f", b"d") and size.isdigit() and name:
                # surrogateescape: a name that is not UTF-8 still round-trips into later commands
                entries.append(RemoteEntry(name.decode("utf-8", "surrogateescape"), int(size), kind == b"d"))
        return entries

    async def forward(self, remote_host: str, remote_port: int, local_port: int | None = None,
                      local_path: str | None = None) -> Forward:
        await self.connect()
        if local_path:
            return await self._path_forward(local_path, remote_host, remote_port)
        last = ""
        for _ in range(1 if local_port else FORWARD_TRIES):
            port = local_port or _free_port()  # ssh -L cannot pick a port itself
            if not _port_is_free(port):
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
                               f"{_tail(last)}")

    async def hold_interactive(self) -> Release | None:
        if not self._mux:
            return None  # each call is a connection of its own: nothing to hold on the tunnel's one
        await self.connect()
        argv = self._client_argv(session=False)
        argv[-2:-2] = [*_o("ClearAllForwardings", "yes"), *_o("RemoteCommand", "none"), "-tt"]
        process = await asyncio.create_subprocess_exec(
            *argv, HOLD_COMMAND, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=self._env(), start_new_session=True)

        async def release() -> None:
            if process.returncode is None:
                process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), timeout=5)

        return release

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
                                   f"{_tail(forward)}")
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
            raise ConnectionLost(f"the connection to {self.target.host} dropped:\n{_tail(err)}")
        return err

    async def _process_forward(self, spec: str, port: int, remote_host: str, remote_port: int,
                               path: str | None = None) -> Forward | str:
        # LocalCommand runs once the listener is up (ExitOnForwardFailure ends ssh otherwise).
        argv = self._client_argv(session=False)
        owner_only = [*_o("StreamLocalBindMask", "0177"), *_o("StreamLocalBindUnlink", "yes")] if path else []
        argv[-2:-2] = [*_o("ExitOnForwardFailure", "yes"), *_o("PermitLocalCommand", "yes"), *owner_only,
                       *_o("LocalCommand", f"echo {FORWARD_READY}"), "-N", "-L", spec]
        # stderr to a file: ssh logs every refused tunnel connection, and an unread pipe would fill up.
        with tempfile.TemporaryFile() as log:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log, env=self._env())
            assert process.stdout is not None
            try:
                line = await asyncio.wait_for(process.stdout.readline(), self.target.connect_timeout + 30)
            except BaseException:
                await _reap(process)
                raise
            if FORWARD_READY.encode() in line:
                return _ProcessForward(self, process, port, remote_host, remote_port, path)
            await _reap(process)
            log.seek(0)
            return log.read()[-16384:].decode(errors="replace")
