"""The connection keeper's guards and fallbacks, without a cluster: who may own its directory and socket,
who may answer on the socket (SO_PEERCRED), typed errors across the wire, and a command that goes on over
a direct connection whenever the keeper cannot serve it."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from braas_hpc.core.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionLost,
    HostKeyChanged,
    RemoteCommandError,
)
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import KeptTransport, NoPrompts, SSHTarget, TransportPool, keep_seconds
from braas_hpc.core.transport.keeper import link, pipes, server, sockets, wire
from braas_hpc.core.transport.keeper.client import portable_target
from braas_hpc.core.transport.local import LocalTransport

NOBODY = 65534


@pytest.fixture
def keeper_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))
    monkeypatch.setenv("BRAAS_HPC_KEEPER", "on")
    monkeypatch.setenv("BRAAS_HPC_KEEPER_DIR", str(base / "k"))
    yield base / "k"
    subprocess.run(["rm", "-rf", str(base)], check=False)


# ---- the directory and the socket ----------------------------------------------------------------


def test_the_directory_is_made_private(keeper_dir: Path) -> None:
    assert sockets.private_dir() == keeper_dir
    assert keeper_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o777])
def test_a_directory_open_to_others_is_refused(keeper_dir: Path, mode: int) -> None:
    keeper_dir.mkdir(mode=0o700)
    keeper_dir.chmod(mode)
    with pytest.raises(sockets.KeeperUnavailable, match="open to others"):
        sockets.private_dir()


def test_a_directory_of_another_user_is_refused(keeper_dir: Path) -> None:
    keeper_dir.mkdir(mode=0o700)
    os.chown(keeper_dir, NOBODY, NOBODY)
    with pytest.raises(sockets.KeeperUnavailable, match="belongs to uid"):
        sockets.private_dir()


def test_a_link_in_place_of_the_directory_is_refused(keeper_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    keeper_dir.symlink_to(elsewhere)
    with pytest.raises(sockets.KeeperUnavailable):
        sockets.private_dir()


def test_a_parent_others_can_change_is_refused(keeper_dir: Path) -> None:
    keeper_dir.parent.chmod(0o777)  # no sticky bit: anyone could rename our directory away
    with pytest.raises(sockets.KeeperUnavailable, match="other users"):
        sockets.private_dir()


def test_the_socket_is_0600_and_a_foreign_one_is_refused(keeper_dir: Path) -> None:
    path = sockets.private_dir() / sockets.SOCKET_NAME
    listener = sockets.listening_socket(path)
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        sockets.check_socket(path)
        os.chmod(path, 0o666)
        with pytest.raises(sockets.KeeperUnavailable, match="open to others"):
            sockets.check_socket(path)
        os.chmod(path, 0o600)
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(sockets.KeeperUnavailable, match="belongs to uid"):
            sockets.check_socket(path)
    finally:
        listener.close()


def test_a_socket_served_by_another_uid_is_refused(keeper_dir: Path) -> None:
    """The socket file is ours and 0600, but the process answering on it is another user's (it called
    listen()): SO_PEERCRED names it, and the client refuses before sending anything."""
    path = sockets.private_dir() / sockets.SOCKET_NAME
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(path))
    os.chmod(path, 0o600)
    serve = ("import socket, sys\ns = socket.socket(fileno=int(sys.argv[1]))\ns.listen(1)\nprint('ready', flush=True)\n"
             "c, _ = s.accept()\nsys.stdout.write(repr(c.recv(100)))\n")
    # The system's Python: the suite's own may live where that user cannot read (root's pyenv).
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    child = subprocess.Popen([python, "-c", serve, str(bound.fileno())], pass_fds=(bound.fileno(),), user=NOBODY,
                             group=NOBODY, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(sockets.KeeperUnavailable, match=f"uid {NOBODY}"):
            asyncio.run(link.open_connection(start=False))
        assert child.communicate(timeout=10)[0] == "b''", "the client sent something to a stranger"
    finally:
        child.kill()
        bound.close()


# ---- errors across the socket ----------------------------------------------------------------------


def _across(exc: BaseException) -> BaseException:
    return wire.decode_error(wire.encode_error(exc))


def test_typed_errors_keep_their_type_and_fields() -> None:
    changed = _across(HostKeyChanged("changed!", "h", 2222, "ssh-ed25519", "SHA256:x", "ssh-ed25519 AAAA", "/kh"))
    assert type(changed) is HostKeyChanged and str(changed) == "changed!"
    assert (changed.host, changed.port, changed.fingerprint, changed.known_hosts) == ("h", 2222, "SHA256:x", "/kh")
    failed = _across(RemoteCommandError("ls x", 2, "out", "no such file"))
    assert type(failed) is RemoteCommandError and (failed.exit_status, failed.stderr) == (2, "no such file")
    assert type(_across(AuthenticationFailed("refused"))) is AuthenticationFailed
    assert type(_across(ConnectionLost("dropped"))) is ConnectionLost
    assert type(_across(TimeoutError("slow"))) is TimeoutError
    missing = _across(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"))
    assert type(missing) is FileNotFoundError and missing.filename == "/x"
    assert type(_across(KeyError("bug"))) is ConnectionFailed


# ---- when the keeper cannot serve, the command goes direct -------------------------------------------


def _kept(keep_s: float = 60.0) -> KeptTransport:
    return KeptTransport("asyncssh", SSHTarget(host="cluster.invalid"), NoPrompts(), keep_s, LocalTransport)


def test_an_unsafe_keeper_directory_means_a_direct_connection(keeper_dir: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    keeper_dir.mkdir(mode=0o777)
    keeper_dir.chmod(0o777)
    transport = _kept()
    with caplog.at_level(logging.DEBUG, logger="braas_hpc"):
        done = asyncio.run(transport.run(["echo", "direct"]))
    assert done.stdout == "direct\n" and transport.is_direct
    assert "connection keeper not used" in caplog.text and "open to others" in caplog.text
    assert not (keeper_dir / sockets.SOCKET_NAME).exists()


def test_a_keeper_that_does_not_start_means_a_direct_connection(keeper_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link, "START_TIMEOUT_S", 0.5)
    monkeypatch.setattr(link, "_start_keeper", lambda directory: None)  # as if Python could not run it
    transport = _kept()
    assert asyncio.run(transport.run(["echo", "direct"])).stdout == "direct\n"
    assert transport.is_direct


def test_a_keeper_that_hangs_up_mid_command_is_a_lost_connection_then_direct(keeper_dir: Path) -> None:
    """A command may have run when the keeper vanished: not run again, but a lost connection (as when
    SSH drops); the next call goes direct."""
    path = sockets.private_dir() / sockets.SOCKET_NAME
    listener = sockets.listening_socket(path)

    async def scenario() -> tuple[BaseException | None, str]:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.close()

        server = await asyncio.start_unix_server(hang_up, sock=listener)
        transport = _kept()
        lost: BaseException | None = None
        try:
            await transport.run(["echo", "once"])
        except ConnectionLost as exc:
            lost = exc
        again = await transport.run(["echo", "direct"])
        server.close()
        return lost, again.stdout

    lost, again = asyncio.run(scenario())
    assert isinstance(lost, ConnectionLost) and "keeper stopped" in str(lost)
    assert again == "direct\n"


def test_keep_seconds_follow_the_preset_and_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_KEEPER", "on")
    preset = load_preset("karolina")
    assert keep_seconds(preset) == preset.keep_connection_min * 60 > 0
    assert keep_seconds(load_preset("local")) == 0
    monkeypatch.setenv("BRAAS_HPC_KEEPER", "off")
    assert keep_seconds(preset) == 0

    async def made() -> object:
        return TransportPool().get(preset)

    assert not isinstance(asyncio.run(made()), KeptTransport)
    monkeypatch.setenv("BRAAS_HPC_KEEPER", "on")
    assert isinstance(asyncio.run(made()), KeptTransport)


class _Closing(LocalTransport):
    """A transport that records being closed (the keeper's expiry is what is tested)."""

    closed = False

    async def close(self) -> None:
        self.closed = True


def test_an_idle_connection_is_closed_one_in_use_is_not_and_the_keeper_leaves(
        keeper_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "CHECK_S", 0.05)
    monkeypatch.setattr(server, "LEAVE_AFTER_S", 0.3)

    async def scenario() -> tuple[bool, bool, bool, bool]:
        keeper = server.Keeper()
        relay = server.RelayPrompts(asyncio.get_running_loop())
        idle, used = _Closing(), _Closing()
        keeper.kept[("idle",)] = server.Kept("asyncssh", SSHTarget(host="a"), idle, relay, keep_s=0.2)
        in_use = keeper.kept[("used",)] = server.Kept("asyncssh", SSHTarget(host="b"), used, relay, keep_s=0.0)
        in_use.busy = 1  # a forward, a held session, a running command
        running = asyncio.create_task(keeper.run(sockets.Listening(sockets.private_dir())))
        await asyncio.sleep(0.6)
        idle_closed, used_closed_early, still_running = idle.closed, used.closed, not running.done()
        in_use.busy = 0
        await asyncio.wait_for(running, 5)  # nothing kept, no client: it leaves
        return idle_closed, used_closed_early, still_running, used.closed

    idle_closed, used_closed_early, still_running, used_closed = asyncio.run(scenario())
    assert idle_closed and not used_closed_early and still_running and used_closed


# ---- a stream's input through the keeper ------------------------------------------------------------


async def _local_keeper(target: SSHTarget) -> asyncio.Task[None]:
    """A keeper in this process whose kept connection to `target` runs commands here (LocalTransport)."""
    keeper = server.Keeper()
    key = ("asyncssh", *server.target_from(portable_target(target)).key)
    relay = server.RelayPrompts(asyncio.get_running_loop())
    keeper.kept[key] = server.Kept("asyncssh", target, LocalTransport(), relay, keep_s=60.0)
    directory = sockets.private_dir()
    running = asyncio.create_task(keeper.run(sockets.Listening(directory)))
    where = Path(pipes.address(directory)) if sockets.endpoint() == "pipe" else directory / sockets.SOCKET_NAME
    for _ in range(500):  # listening before a client comes (else the client would start a keeper process)
        if where.exists():
            break
        await asyncio.sleep(0.01)
    return running


def test_stream_input_is_held_back_until_the_command_takes_it(keeper_dir: Path, tmp_path: Path) -> None:
    """Blocks written while the command sleeps return only as its pipe takes them (a write returns once
    the kept transport took its bytes; a keeper that buffered the input would let all 8 MiB through);
    afterwards the command has every byte, in order."""
    blocks = [os.urandom(1 << 20) for _ in range(8)]
    out = tmp_path / "out"

    async def scenario() -> int:
        running = await _local_keeper(_kept().target)
        handle = await _kept().converse(["sh", "-c", f'sleep 1.5; exec cat > "{out}"'])
        assert handle.write is not None and handle.write_eof is not None
        started, before = asyncio.get_running_loop().time(), 0
        for block in blocks:
            await handle.write(block)
            if asyncio.get_running_loop().time() - started < 1.0:
                before += len(block)
        await handle.write_eof()
        assert [line async for line in handle.lines] == [] and await handle.wait() == 0
        await handle.close()
        running.cancel()
        return before

    before = asyncio.run(scenario())
    assert before <= 2 << 20, f"{before} bytes written before the command read any"
    assert out.read_bytes() == b"".join(blocks)


def test_input_to_a_command_that_exited_is_a_lost_connection(keeper_dir: Path) -> None:
    async def scenario() -> tuple[list[str], int | None]:
        running = await _local_keeper(_kept().target)
        handle = await _kept().converse(["sh", "-c", "head -c 10 >/dev/null; echo read; exit 4"])
        assert handle.write is not None and handle.write_eof is not None
        reading = asyncio.create_task(_texts(handle.lines))
        with pytest.raises(ConnectionLost):
            for _ in range(64):
                await asyncio.wait_for(handle.write(bytes(1 << 20)), 10)
        await handle.write_eof()  # as on a direct connection: no error
        lines = await asyncio.wait_for(reading, 10)
        status = await handle.wait()
        await handle.close()
        running.cancel()
        return lines, status

    assert asyncio.run(scenario()) == (["read"], 4)


async def _texts(lines: object) -> list[str]:
    return [line.text async for line in lines]  # type: ignore[attr-defined]


def test_a_keeper_that_hangs_up_mid_input_is_a_lost_connection_then_direct(keeper_dir: Path) -> None:
    """The keeper opened the stream, then vanished while input was on its way: the write is a lost
    connection naming the keeper (the command may have read part of it: nothing is sent again), and the
    next call goes direct."""
    listener = sockets.listening_socket(sockets.private_dir() / sockets.SOCKET_NAME)

    async def scenario() -> tuple[BaseException | None, str]:
        async def hang_up_after_the_first_frame(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            await wire.send(writer, {"opened": True})
            await reader.readline()  # a frame's header
            writer.close()

        keeper = await asyncio.start_unix_server(hang_up_after_the_first_frame, sock=listener)
        transport = _kept()
        handle = await transport.converse(["cat"])
        assert handle.write is not None
        lost: BaseException | None = None
        try:
            await asyncio.wait_for(handle.write(bytes(1 << 20)), 10)
        except ConnectionLost as exc:
            lost = exc
        await handle.close()
        again = await transport.run(["echo", "direct"])
        keeper.close()
        return lost, again.stdout

    lost, again = asyncio.run(scenario())
    assert isinstance(lost, ConnectionLost) and "keeper stopped" in str(lost), lost
    assert again == "direct\n"


# ---- the Windows endpoint (a named pipe and a key's proof), run here over a Unix socket ------------------
# Only the two pipe calls of Windows' event loop (start_serving_pipe, create_pipe_connection) and the file
# lock (msvcrt) cannot run here: everything around them does.


def test_commands_go_through_a_keeper_on_the_pipe_endpoint(keeper_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_KEEPER_ENDPOINT", "pipe")

    async def scenario() -> tuple[str, bool]:
        running = await _local_keeper(_kept().target)
        transport = _kept()
        done = await transport.run(["echo", "through the keeper"])
        direct = transport.is_direct
        running.cancel()
        return done.stdout, direct

    out, direct = asyncio.run(scenario())
    assert out == "through the keeper\n" and not direct
    assert (keeper_dir / pipes.KEY_NAME).stat().st_mode & 0o777 == 0o600


def _impostor_keeper(directory: Path, answer: Callable[[bytes], bytes], said: list[bytes]) -> Any:
    """Something else listening where the keeper would, answering the greeting with `answer(greeting)`."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeting = await reader.readline()
        writer.write(answer(greeting))
        await writer.drain()
        said.append(await reader.read(1 << 16))  # all the client sends afterwards
        writer.close()

    return asyncio.start_unix_server(handler, pipes.address(directory))


@pytest.mark.parametrize("answer", [
    lambda greeting: b"00" * 32 + b" " + b"0" * 64 + b"\n",  # a made-up proof
    lambda greeting: b"not a proof\n",
    lambda greeting: b"",  # silence, then hangs up
], ids=["wrong-proof", "garbage", "hangs-up"])
def test_a_pipe_served_by_an_impostor_gets_no_request(keeper_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       answer: Callable[[bytes], bytes]) -> None:
    """Another user made the pipe first: the command sends it no request (no command, no answer to a
    login question), and goes direct."""
    monkeypatch.setenv("BRAAS_HPC_KEEPER_ENDPOINT", "pipe")
    directory = sockets.private_dir()
    pipes.write_key(directory)
    said: list[bytes] = []

    async def scenario() -> tuple[str, bool]:
        impostor = await _impostor_keeper(directory, answer, said)
        transport = _kept()
        done = await transport.run(["echo", "direct"])
        impostor.close()
        await asyncio.sleep(0.1)
        return done.stdout, transport.is_direct

    out, direct = asyncio.run(scenario())
    assert out == "direct\n" and direct
    assert all(b"echo" not in part and b"op" not in part for part in said), said


def test_a_client_without_the_key_gets_no_service(keeper_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_KEEPER_ENDPOINT", "pipe")

    async def scenario() -> tuple[bytes, bytes]:
        running = await _local_keeper(_kept().target)
        # Another user: can reach the pipe, cannot read the key; guesses one.
        reader, writer = await asyncio.open_unix_connection(pipes.address(keeper_dir))
        with pytest.raises(pipes.ProofFailed):
            await pipes.prove_to_keeper(reader, writer, b"guessed key".ljust(32, b"."))
        writer.close()
        # One that skips the proof and sends a request at once.
        reader, writer = await asyncio.open_unix_connection(pipes.address(keeper_dir))
        writer.write(b'{"op": "exec", "command": "echo served"}\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(1 << 16), 10)
        writer.close()
        # And one that replays a real client's proof from an earlier exchange: the nonces differ.
        reader, writer = await asyncio.open_unix_connection(pipes.address(keeper_dir))
        writer.write(pipes.GREETING + b"11" * 32 + b"\n")
        await writer.drain()
        await reader.readline()
        writer.write(b"0" * 64 + b"\n")
        await writer.drain()
        replayed = await asyncio.wait_for(reader.read(1 << 16), 10)
        running.cancel()
        return answer, replayed

    answer, replayed = asyncio.run(scenario())
    assert answer == b"" and replayed == b""  # hung up on, nothing served
