"""The kept shell (a long-lived `sh` that short commands share) over a local `sh` process: the framing,
the answer cap, time-outs and the rules for falling back to a call of its own. Over real sshd for each
back end: tests/integration/test_transport_contract.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from braas_hpc.core.errors import AnswerTooLarge
from braas_hpc.core.transport import kept_shell
from braas_hpc.core.transport.kept_shell import KeptShell, SessionLost, ShellPipe, run_kept
from braas_hpc.core.transport.local import LocalTransport
from braas_hpc.core.transport.openssh.shell import remote_shell


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def local_shell() -> KeptShell:
    return remote_shell(lambda: (["sh", "-c"], dict(os.environ)))  # `sh -c "exec sh"`: the kept sh, here


async def _run(shell: KeptShell, command: str, timeout: float | None = 10) -> tuple[int, bytes, bytes]:
    async with shell.lock:
        return await shell.run(command, timeout)


def test_many_commands_share_one_session_each_in_a_subshell() -> None:
    async def work() -> None:
        shell = local_shell()
        try:
            first = await _run(shell, "echo $PPID")  # the subshell's parent: the kept sh
            assert first[0] == 0
            assert await _run(shell, "cd /; echo out; echo err >&2; exit 3") == (3, b"out\n", b"err\n")
            assert await _run(shell, "pwd") == (0, os.getcwd().encode() + b"\n", b"")  # the cd stayed inside
            assert await _run(shell, "head -c 70000 /dev/zero") == (0, bytes(70000), b"")
            assert (await _run(shell, "echo $PPID"))[1] == first[1]
            assert await _run(shell, "cat") == (0, b"", b"")  # stdin is /dev/null, not the session's requests
            assert shell.starts == 1
        finally:
            await shell.close()

    run(work())


def test_an_answer_over_the_cap_is_not_read_and_the_session_starts_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kept_shell, "ANSWER_BYTES", 100_000)

    async def work() -> None:
        shell = local_shell()
        try:
            await _run(shell, "true")
            with pytest.raises(AnswerTooLarge, match="holds 300000 bytes, more than the 100000"):
                await _run(shell, "head -c 300000 /dev/zero")
            assert await _run(shell, "echo ok") == (0, b"ok\n", b"")
            assert shell.starts == 2
        finally:
            await shell.close()

    run(work())


def test_a_time_out_ends_the_session_and_the_next_command_gets_a_new_one() -> None:
    async def work() -> None:
        shell = local_shell()
        try:
            await _run(shell, "true")
            with pytest.raises(TimeoutError):
                await _run(shell, "sleep 30", timeout=0.5)
            assert await _run(shell, "echo ok") == (0, b"ok\n", b"")
            assert shell.starts == 2
        finally:
            await shell.close()

    run(work())


class _Broken(ShellPipe):
    """A session that ends as soon as a request is written."""

    alive = True

    async def write(self, data: bytes) -> None:
        if b"braas-end" in data and b"ready" not in data:
            raise ConnectionResetError("gone")

    async def readline(self) -> bytes:
        return self.ready

    async def readexactly(self, size: int) -> bytes:
        raise AssertionError("not reached")

    async def close(self) -> None:
        self.alive = False

    async def abort(self) -> None:
        self.alive = False


def test_the_rules_for_a_call_of_its_own() -> None:
    async def nothing() -> None:
        return None

    async def work() -> None:
        shell = local_shell()
        try:
            still_up = lambda _lost: asyncio.sleep(0)  # noqa: E731 - the connection is up: no error
            # With more stdin than the session carries, or while the session is busy: not through the session.
            big = bytes(kept_shell.STDIN_BYTES + 1)
            assert await run_kept(shell, "wc -c", big, None, nothing, still_up) is None
            async with shell.lock:
                assert await run_kept(shell, "echo a", None, None, nothing, still_up) is None
            assert shell.starts == 0
            assert await run_kept(shell, "echo a", None, None, nothing, still_up) == (0, b"a\n", b"")
        finally:
            await shell.close()

        async def cannot_start() -> ShellPipe:
            raise OSError("no channel")

        gone = [SessionLost("x", sent=True)]

        async def connection_gone(lost: SessionLost) -> Exception | None:
            gone.append(lost)
            return ConnectionError("dropped")

        # Not started: nothing was sent, so a call of its own runs it, whatever the connection says.
        assert await run_kept(KeptShell(cannot_start), "echo", None, None, nothing, connection_gone) is None
        assert len(gone) == 1

        broken = _Broken()

        async def opens_broken() -> ShellPipe:
            return broken

        sent = KeptShell(opens_broken)
        broken.ready = f"{sent._token} ready\n".encode()
        # Sent, the connection gone: its error.
        with pytest.raises(ConnectionError, match="dropped"):
            await run_kept(sent, "echo", None, None, nothing, connection_gone)
        assert gone[-1].sent
        # Sent, only the session ended: a call of its own.
        broken.alive = True
        assert await run_kept(sent, "echo", None, None, nothing, still_up) is None

    run(work())


def test_a_small_stdin_goes_through_the_session_byte_for_byte() -> None:
    async def work() -> None:
        shell = local_shell()
        try:
            still_up = lambda _lost: asyncio.sleep(0)  # noqa: E731
            awkward = (b"line\n\0nul\xff\xfe" + f"{shell._token}-in\n".encode() + b"EOF\n" * 3 + bytes(range(256)))
            assert await run_kept(shell, "cat", awkward, None, nothing, still_up) == (0, awkward, b"")
            assert await run_kept(shell, "wc -c", b"", None, nothing, still_up) == (0, b"0\n", b"")
            most = os.urandom(kept_shell.STDIN_BYTES)
            assert await run_kept(shell, "sha256sum", most, None, nothing, still_up) == (
                0, hashlib.sha256(most).hexdigest().encode() + b"  -\n", b"")
            # The next command without stdin reads /dev/null, not what the last one was given.
            assert await run_kept(shell, "cat", None, None, nothing, still_up) == (0, b"", b"")
            assert shell.starts == 1
        finally:
            await shell.close()

    run(work())


def test_a_session_that_cannot_decode_stdin_runs_nothing_and_stops_trying(tmp_path: Path) -> None:
    """A cluster without `base64`: the command does not run with wrong input; it goes on a call of its
    own, and the session keeps serving commands without stdin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "mktemp", "cat", "wc", "rm", "touch"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    env = {**os.environ, "PATH": str(bin_dir)}
    marker = tmp_path / "ran"

    async def work() -> None:
        shell = remote_shell(lambda: (["/bin/sh", "-c"], env))
        try:
            still_up = lambda _lost: asyncio.sleep(0)  # noqa: E731
            assert await run_kept(shell, f"touch {marker}", b"data", None, nothing, still_up) is None
            assert not marker.exists() and not shell.takes_stdin
            assert await run_kept(shell, f"touch {marker}", b"data", None, nothing, still_up) is None
            assert await run_kept(shell, "echo still", None, None, nothing, still_up) == (0, b"still\n", b"")
            assert shell.starts == 1
        finally:
            await shell.close()

    run(work())


async def nothing() -> None:
    return None


class KeptLocal(LocalTransport):
    """The local transport with a kept shell (a local sh), as the SSH back ends have one."""

    def __init__(self) -> None:
        super().__init__()
        self.shell = local_shell()

    def _kept_shell(self) -> KeptShell | None:
        return self.shell


AWKWARD = ["frame_0001.png", "-dash.png", "with space.png", "new\nline.png", "empty.png"]


def test_a_batch_brings_whole_files_in_one_request(tmp_path: Path) -> None:
    remote, here = tmp_path / "remote", tmp_path / "here"
    remote.mkdir()
    contents = {name: os.urandom(n * 300_001) for n, name in enumerate(AWKWARD[:-1], 1)} | {"empty.png": b""}
    for name, data in contents.items():
        (remote / name).write_bytes(data)
    (here / ".resumed.png.braas-part").parent.mkdir()
    (here / ".resumed.png.braas-part").write_bytes(b"half")  # a cut download: left to `get`, which resumes it
    (remote / "resumed.png").write_bytes(b"half and the rest")
    items = [(str(remote / n), here / n) for n in [*AWKWARD, "missing.png", "resumed.png"]]
    seen: list[tuple[str, int, int]] = []

    async def work() -> set[str]:
        t = KeptLocal()
        try:
            return await t.get_batch(items, lambda path: lambda done, total: seen.append((path, done, total)))
        finally:
            await t.shell.close()
            assert t.shell.starts == 1

    done = run(work())
    assert done == {str(remote / n) for n in AWKWARD}
    assert {p.name: p.read_bytes() for p in here.iterdir() if not p.name.startswith(".")} == contents
    assert sorted(p.name for p in here.iterdir() if p.name.startswith(".")) == [".resumed.png.braas-part"]
    assert (str(remote / "-dash.png"), 600_002, 600_002) in seen


def test_a_batch_cut_midway_keeps_what_arrived_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session dies in the second file: the first is in place, the second's bytes wait in its temp file
    for `get` to resume, the rest is left to `get`; nothing half-written under a frame's name."""
    remote, here = tmp_path / "remote", tmp_path / "here"
    remote.mkdir()
    for n in range(3):
        (remote / f"f{n}").write_bytes(bytes([n]) * 3_000_000)
    monkeypatch.setattr(kept_shell, "FILE_BLOCK", 1 << 16)
    t = KeptLocal()
    arrived = []
    real = kept_shell._bytes_of

    async def cut_in_the_second(pipe: ShellPipe, size: int):  # noqa: ANN202
        async for chunk in real(pipe, size):
            arrived.append(len(chunk))
            if len(arrived) == 50:  # the first file was 46 blocks
                await pipe.abort()
            yield chunk

    monkeypatch.setattr(kept_shell, "_bytes_of", cut_in_the_second)
    items = [(str(remote / f"f{n}"), here / f"f{n}") for n in range(3)]
    done = run(t.get_batch(items))
    assert done == {str(remote / "f0")} and (here / "f0").read_bytes() == bytes([0]) * 3_000_000
    assert not (here / "f1").exists() and not (here / "f2").exists()
    assert 0 < (here / ".f1.braas-part").stat().st_size < 3_000_000
    run(t.get(str(remote / "f1"), here / "f1"))  # resumed from the temp file, checked by its hash
    assert (here / "f1").read_bytes() == bytes([1]) * 3_000_000
