"""One contract for the three SSH back ends, against the real sshd instances of the test cluster.

Every test runs for asyncssh, paramiko and the system OpenSSH client. The lab servers (TOTP sshd,
jump host and its private listener in a network namespace, agent, encrypted key) come from
tests/testbed/sshlab.py; the fault proxy from tests/testbed/tcpproxy.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from braas_hpc.core.errors import (
    AnswerTooLarge,
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionLost,
    HostKeyChanged,
    HostKeyRevoked,
    HostKeyUnknown,
    RemoteCommandError,
)
from braas_hpc.core.transport import SSHTarget, Transport, kept_shell, make_transport
from braas_hpc.core.transport.base import StreamHandle, StreamLine
from braas_hpc.core.transport.hostkeys import host_pattern, recorded_keys
from tests.helpers import Answers, sha256
from tests.testbed.tcpproxy import running_proxy

BACKENDS = ("asyncssh", "paramiko", "openssh")
HOSTILE = [
    "a b",
    "it's",
    'say "hi"',
    "$(touch {canary})",
    "`touch {canary}`",
    "x;touch {canary}",
    "a\nb",
    "ümlaut ✓",
    "*",
    "-n",
    "--",
    "$HOME",
    "\\",
    "",
]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(testbed) -> Path:  # noqa: ANN001
    return Path(testbed.key_file).parent


@pytest.fixture
def main_target(testbed) -> SSHTarget:  # noqa: ANN001
    return SSHTarget(
        host="127.0.0.1",
        port=testbed.ssh_port,
        user=testbed.user,
        key_files=(str(testbed.key_file),),
        known_hosts=str(testbed.known_hosts),
        ssh_config="none",
        use_agent=False,
    )


@pytest.fixture
def connect(backend: str) -> Callable[..., Transport]:
    made: list[Transport] = []

    def make(target: SSHTarget, prompts: Any = None) -> Transport:
        transport = make_transport(backend, target, prompts)
        made.append(transport)
        return transport

    make.backend = backend  # type: ignore[attr-defined]
    return make


async def _use(transport: Transport, work: Callable[[Transport], Coroutine[Any, Any, Any]]) -> Any:
    try:
        return await work(transport)
    finally:
        await transport.close()


# ---- commands ---------------------------------------------------------------------------------


def test_arguments_reach_the_command_verbatim(connect, main_target, tmp_path: Path, remote) -> None:  # noqa: ANN001
    canary = f"/tmp/braas-canary-{secrets.token_hex(6)}"
    args = [a.format(canary=canary) for a in HOSTILE]

    async def work(t: Transport) -> None:
        done = await t.run(["printf", "%s\\0", *args])
        assert done.stdout.split("\0")[:-1] == args
        assert (await t.run(["test", "-e", canary], check=False)).exit_status == 1

    run(_use(connect(main_target), work))


def test_failure_is_a_typed_error_with_the_stderr_tail(connect, main_target) -> None:  # noqa: ANN001
    async def work(t: Transport) -> None:
        with pytest.raises(RemoteCommandError) as info:
            await t.run(["sh", "-c", "echo oops >&2; exit 3"])
        assert info.value.exit_status == 3 and "oops" in str(info.value) and "exit 3" in info.value.command
        done = await t.run(["cat"], stdin="fed through stdin\n")
        assert done.stdout == "fed through stdin\n"
        with pytest.raises(TimeoutError):
            await t.run(["sleep", "10"], timeout=1)

    run(_use(connect(main_target), work))


def test_commands_reuse_one_connection(connect, main_target) -> None:  # noqa: ANN001
    async def work(t: Transport) -> list[str]:
        await t.connect()
        return [(await t.run(["sh", "-c", 'echo "$SSH_CONNECTION"'])).stdout for _ in range(5)]

    # The client port is part of $SSH_CONNECTION: one connection means one client port.
    seen = run(_use(connect(main_target), work))
    assert len({line.split()[1] for line in seen}) == 1


# The sshd child that runs a command's session (its ancestor whose parent is sshd): one per session channel.
_SESSION_OF = (
    'p=$$; while :; do q=$(cut -d" " -f4 "/proc/$p/stat"); '
    'case $(cat "/proc/$q/comm") in sshd*) echo "$p"; exit 0;; esac; [ "$q" -gt 1 ] || exit 1; p=$q; done')


def test_a_command_that_does_not_read_its_input_still_says_how_it_went(connect, main_target,  # noqa: ANN001
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A command given more input than it reads (one that refuses at once, a `kill`) may end before the
    input is sent: its exit status and output come back; no "connection dropped". Seen once in a CI
    rehearsal (asyncssh raised when it wrote the input to a channel the command had already closed)."""
    large = b"y" * (kept_shell.STDIN_BYTES + 1)  # past the kept shell's limit: a channel of its own

    async def work(t: Transport) -> list[tuple[int | None, str]]:
        done = []
        for i in range(20):  # the race is the command's end against the input's first bytes
            got = await t.run(["sh", "-c", f"echo refused {i} >&2; exit 3"], stdin=large, check=False)
            done.append((got.exit_status, got.stderr))
        return done

    if connect.backend == "asyncssh":  # the race made certain: the channel refuses the input's first write
        import asyncssh

        real_write = asyncssh.SSHClientChannel.write

        def closed_to_input(self, data, datatype=None):  # noqa: ANN001, ANN202
            if len(data) > kept_shell.STDIN_BYTES:
                raise BrokenPipeError("Channel not open for sending")
            return real_write(self, data, datatype)

        monkeypatch.setattr(asyncssh.SSHClientChannel, "write", closed_to_input)
    assert run(_use(connect(main_target), work)) == [(3, f"refused {i}\n") for i in range(20)]


def test_short_commands_share_one_session_channel(connect, main_target) -> None:  # noqa: ANN001
    """Commands without stdin, or with a small one, go through one kept remote shell: no channel opened
    per command (a round trip each). Counted on the real sshd: the session each command runs under."""
    small = bytes(range(256)) * 4 + b"\n"
    large = b"y" * (kept_shell.STDIN_BYTES + 1)

    async def work(t: Transport) -> tuple[set[str], str, str, str]:
        sessions = {(await t.run(["sh", "-c", _SESSION_OF])).stdout for _ in range(5)}
        given = await t.run(["sh", "-c", f'({_SESSION_OF}); sha256sum'], stdin=small)
        sessions.add(given.stdout.splitlines()[0] + "\n")
        with_large = (await t.run(["sh", "-c", f"({_SESSION_OF}); cat >/dev/null"], stdin=large)).stdout
        # The kept shell killed from outside: the next command still runs (a new session, or its own call).
        await t.run(["kill", "-9", next(iter(sessions)).strip()], stdin=large, check=False)
        await asyncio.sleep(0.3)
        after = (await t.run(["echo", "still here"])).stdout
        return sessions, given.stdout.splitlines()[1], with_large, after

    sessions, digest, with_large, after = run(_use(connect(main_target), work))
    assert len(sessions) == 1 and next(iter(sessions)).strip().isdigit()
    assert digest.split()[0] == hashlib.sha256(small).hexdigest()  # the input arrived byte for byte
    assert with_large not in sessions  # a channel of its own
    assert after == "still here\n"


def test_an_oversized_answer_is_refused_unread(connect, main_target, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The kept shell's header gives the answer's size: a size over the cap is not read into memory; the
    session starts afresh and the next command works."""
    monkeypatch.setattr(kept_shell, "ANSWER_BYTES", 100_000)

    async def work(t: Transport) -> None:
        assert (await t.run(["echo", "warm"])).stdout == "warm\n"  # the session is up: the next call uses it
        with pytest.raises(AnswerTooLarge, match="more than the 100000 bytes") as info:
            await t.run(["head", "-c", "300000", "/dev/zero"])
        assert "300000 bytes" in str(info.value)
        assert (await t.run(["echo", "ok"])).stdout == "ok\n"

    run(_use(connect(main_target), work))


def test_stream_lines_arrive_live_and_cancel_ends_the_process(connect, main_target, remote) -> None:  # noqa: ANN001
    token = f"braas-stream-{time.monotonic_ns()}"

    async def work(t: Transport) -> list[tuple[float, str]]:
        got: list[tuple[float, str]] = []
        started = time.monotonic()
        async for line in t.stream(["sh", "-c", f"for i in 1 2 3; do echo {token} $i; sleep 0.5; done"]):
            got.append((time.monotonic() - started, line.text))
        # A command that would run forever: leave after its first line.
        async with aclosing(t.stream(["sh", "-c", f"while :; do echo {token}; sleep 0.2; done"])) as lines:
            async for _line in lines:
                break
        return got

    got = run(_use(connect(main_target), work))
    assert [text for _, text in got] == [f"{token} {i}" for i in (1, 2, 3)]
    assert got[0][0] < got[2][0] - 0.6  # the first line came before the command ended
    deadline = time.monotonic() + 10
    pattern = f"echo [b]{token[1:]}"  # the bracket keeps pgrep's own shell from matching itself
    while remote(f"pgrep -f '{pattern}'").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert remote(f"pgrep -f '{pattern}'").returncode == 1, "the cancelled command still runs"


CONVERSE_BLOCK = 1 << 20
CONVERSE_BLOCKS = 20


async def _collect(lines: Any) -> list[StreamLine]:
    return [line async for line in lines]


@asynccontextmanager
async def _conversation(t: Transport, script: str) -> AsyncIterator[tuple[StreamHandle, asyncio.Task]]:
    """`sh -c script` started with converse, its lines read all along (as the submission does)."""
    handle = await t.converse(["sh", "-c", script])
    assert handle.write is not None and handle.write_eof is not None
    reading = asyncio.create_task(_collect(handle.lines))
    try:
        yield handle, reading
    finally:
        reading.cancel()
        await handle.close()


def test_converse_streams_input_held_back_by_flow_control(connect, main_target) -> None:  # noqa: ANN001
    """20 MiB written in 1 MiB blocks to a command that reads them only after a pause: the writes wait
    for it (each returns once the channel took its bytes, nothing is buffered whole), and it sees every
    byte, in order (its SHA-256)."""
    data = [secrets.token_bytes(CONVERSE_BLOCK) for _ in range(CONVERSE_BLOCKS)]
    total = CONVERSE_BLOCK * CONVERSE_BLOCKS
    pause = 2.0

    async def work(t: Transport) -> tuple[list[StreamLine], int | None, int]:
        async with _conversation(t, f"sleep {pause}; head -c {total} | sha256sum") as (handle, reading):
            started = time.monotonic()
            before_it_read = 0
            for block in data:
                await asyncio.wait_for(handle.write(block), 60)
                if time.monotonic() - started < pause * 0.75:
                    before_it_read += len(block)
            await handle.write_eof()
            lines = await asyncio.wait_for(reading, 60)
            return lines, await handle.wait(), before_it_read

    lines, status, before_it_read = run(_use(connect(main_target), work))
    assert [line.text.split()[0] for line in lines] == [hashlib.sha256(b"".join(data)).hexdigest()]
    assert status == 0
    # SSH's channel window (2 MiB) and the pipes on the way hold a few MiB, not the whole stream.
    assert before_it_read <= total // 2, f"{before_it_read} bytes taken before the command read any"


def test_converse_to_a_command_that_stops_reading(connect, main_target) -> None:  # noqa: ANN001
    """The command reads 1000 bytes, answers and exits: the writer gets ConnectionLost (not a hang, not
    another error) and the answer's lines, stdout and stderr, still arrive with the exit status."""
    script = "head -c 1000 >/dev/null; echo early; echo said >&2; exit 3"

    async def work(t: Transport) -> tuple[list[StreamLine], int | None, int]:
        written = 0
        async with _conversation(t, script) as (handle, reading):
            with pytest.raises(ConnectionLost):
                for _ in range(CONVERSE_BLOCKS):
                    await asyncio.wait_for(handle.write(bytes(CONVERSE_BLOCK)), 60)
                    written += CONVERSE_BLOCK
            lines = await asyncio.wait_for(reading, 60)
            return lines, await handle.wait(), written

    lines, status, written = run(_use(connect(main_target), work))
    assert sorted((line.text, line.stderr) for line in lines) == [("early", False), ("said", True)]
    assert status == 3
    assert written < CONVERSE_BLOCK * CONVERSE_BLOCKS


# ---- files --------------------------------------------------------------------------------------



def test_put_get_with_awkward_names(connect, main_target, tmp_path: Path, testbed) -> None:  # noqa: ANN001
    local = tmp_path / "data file ü $(x).bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    remote_dir = f"{testbed.workdir}/contract dir ✓/{secrets.token_hex(6)}"
    remote_path = f"{remote_dir}/it's $(touch x) ü.bin"
    seen: list[tuple[int, int]] = []

    async def work(t: Transport) -> list[str]:
        await t.run(["mkdir", "-p", remote_dir])
        await t.put(local, remote_path, lambda done, total: seen.append((done, total)))
        back = tmp_path / "back" / local.name
        await t.get(remote_path, back, verify=True)
        assert sha256(back) == sha256(local)
        names = sorted(e.name for e in await t.listdir(remote_dir))
        await t.run(["rm", "-rf", remote_dir])
        return names

    names = run(_use(connect(main_target), work))
    assert names == ["it's $(touch x) ü.bin"]  # no temp file left behind
    assert seen and seen[-1] == (local.stat().st_size, local.stat().st_size)


def test_new_files_come_in_one_stream_on_the_kept_shell(connect, main_target, tmp_path: Path, testbed) -> None:  # noqa: ANN001
    """A batch download: every file through the session short commands use (no channel, no SFTP session
    per file), whole and under its own name; a file missing on the cluster is left to `get`."""
    remote_dir = f"{testbed.workdir}/batch {secrets.token_hex(6)}"
    names = ["frame_0001.png", "-dash $(x) ü.png", "empty.png"]
    data = {names[0]: os.urandom(2 * 1024 * 1024 + 5), names[1]: os.urandom(70_001), names[2]: b""}
    for name, content in data.items():
        (tmp_path / "up").mkdir(exist_ok=True)
        (tmp_path / "up" / name).write_bytes(content)

    async def work(t: Transport) -> tuple[set[str], int]:
        await t.run(["mkdir", "-p", remote_dir])
        for name in names:
            await t.put(tmp_path / "up" / name, f"{remote_dir}/{name}")
        shell = t._kept_shell()
        assert shell is not None
        await t.run(["true"])  # the kept shell is up
        starts = shell.starts
        items = [(f"{remote_dir}/{n}", tmp_path / "down" / n) for n in [*names, "missing.png"]]
        done = await t.get_batch(items)
        await t.run(["rm", "-rf", remote_dir])
        return done, shell.starts - starts

    done, new_sessions = run(_use(connect(main_target), work))
    assert done == {f"{remote_dir}/{n}" for n in names} and new_sessions == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "down").iterdir()} == data  # no temp file left


def test_trees_round_trip(connect, main_target, tmp_path: Path, testbed) -> None:  # noqa: ANN001
    source = tmp_path / "tree"
    for rel in ("a.txt", "sub/b.txt", "sub/deeper/c d.txt"):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(rel)
    remote_dir = f"{testbed.workdir}/tree-{secrets.token_hex(6)}"

    async def work(t: Transport) -> int:
        sent = await t.put_tree(source, remote_dir)
        got = await t.get_tree(remote_dir, tmp_path / "copy")
        await t.run(["rm", "-rf", remote_dir])
        assert sent == got == 3
        return got

    run(_use(connect(main_target), work))
    assert (tmp_path / "copy" / "sub" / "deeper" / "c d.txt").read_text() == "sub/deeper/c d.txt"


def _proxied_known_hosts(testbed, tmp_path: Path, port: int) -> Path:  # noqa: ANN001
    """The main sshd's key, recorded for the proxy's port (the host key check uses host:port)."""
    (key_type, blob), *_ = recorded_keys(Path(testbed.known_hosts), "127.0.0.1", testbed.ssh_port)
    path = tmp_path / "known_hosts_proxy"
    path.write_text(f"{host_pattern('127.0.0.1', port)} {key_type} {base64.b64encode(blob).decode()}\n")
    return path


def _through(proxy: Any, testbed: Any, tmp_path: Path) -> SSHTarget:
    """The main sshd, reached through the fault proxy."""
    return SSHTarget(host="127.0.0.1", port=proxy.port, user=testbed.user, key_files=(str(testbed.key_file),),
                     known_hosts=str(_proxied_known_hosts(testbed, tmp_path, proxy.port)), ssh_config="none",
                     use_agent=False)


def test_upload_survives_dropped_connections(connect, testbed, tmp_path: Path) -> None:  # noqa: ANN001
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(12 * 1024 * 1024))
    remote_path = f"{testbed.workdir}/resume-{secrets.token_hex(6)}.bin"
    # Every connection is cut after 5 MB from the client: the upload needs several connections.
    with running_proxy("127.0.0.1", testbed.ssh_port, drop_after_bytes=5 * 1024 * 1024) as proxy:
        target = _through(proxy, testbed, tmp_path)

        async def work(t: Transport) -> str:
            await t.put(local, remote_path)
            proxy.drop_after_bytes = None
            digest = await t.sha256(remote_path)
            await t.run(["rm", "-f", remote_path])
            return digest

        digest = run(_use(connect(target), work))
        assert proxy.drops >= 2
    assert digest == sha256(local)


def test_download_survives_a_dropped_connection(connect, testbed, tmp_path: Path, remote) -> None:  # noqa: ANN001
    remote_path = f"{testbed.workdir}/download-{secrets.token_hex(6)}.bin"
    assert remote(f"head -c 9000000 /dev/urandom > {remote_path}").returncode == 0
    with running_proxy("127.0.0.1", testbed.ssh_port) as proxy:
        target = _through(proxy, testbed, tmp_path)
        cut = {"done": False}

        def progress(done: int, total: int) -> None:
            if done > 3_000_000 and not cut["done"]:
                cut["done"] = True
                proxy.drop_all()

        async def work(t: Transport) -> str:
            await t.get(remote_path, tmp_path / "got.bin", progress)
            digest = await t.sha256(remote_path)
            await t.run(["rm", "-f", remote_path])
            return digest

        digest = run(_use(connect(target), work))
    assert cut["done"] and proxy.drops >= 1
    assert digest == sha256(tmp_path / "got.bin")
    assert not (tmp_path / ".got.bin.braas-part").exists()


def test_next_call_reconnects_after_a_drop(connect, testbed, tmp_path: Path) -> None:  # noqa: ANN001
    with running_proxy("127.0.0.1", testbed.ssh_port) as proxy:
        target = _through(proxy, testbed, tmp_path)

        async def work(t: Transport) -> str:
            await t.run(["true"])
            proxy.drop_all()
            await asyncio.sleep(0.5)
            for _ in range(2):  # the call that meets the dead link may fail; the next one must work
                try:
                    return (await t.run(["echo", "back"])).stdout
                except Exception:  # noqa: BLE001
                    continue
            raise AssertionError("no reconnect")

        assert run(_use(connect(target), work)) == "back\n"
        assert proxy.connections >= 2


# ---- trust and authentication -----------------------------------------------------------------


class YesToEverything:
    """A user who answers every question with yes: the passphrase, any code, any prompt. Prompts has no
    host-key question, so a back end that trusts a host on such answers (or by itself) is caught."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def passphrase(self, key_file: str) -> str | None:
        self.asked.append(f"passphrase {key_file}")
        return "yes"

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None:
        self.asked.append(f"kbdint {name} {instructions} {prompts}")
        return ["yes" for _ in prompts]


def test_unknown_host_key_carries_the_fingerprint(connect, main_target, tmp_path: Path, testbed) -> None:  # noqa: ANN001
    """Never trusted silently: an empty known_hosts and a user who says yes to everything still fail."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    target = SSHTarget(**{**main_target.__dict__, "known_hosts": str(empty)})
    yes = YesToEverything()
    with pytest.raises(HostKeyUnknown) as info:
        run(_use(connect(target, yes), lambda t: t.run(["true"])))
    assert yes.asked == []  # the host is checked before any credential question
    pub = next(Path(testbed.base_dir).glob("sshd/*ed25519*.pub"))
    expected = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True).stdout.split()[1]
    assert info.value.fingerprint == expected and info.value.key_type == "ssh-ed25519"
    assert expected in str(info.value)
    assert empty.read_text() == ""  # nothing trusted behind the user's back


def test_changed_host_key_is_refused(connect, main_target, tmp_path: Path) -> None:  # noqa: ANN001
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{host_pattern('127.0.0.1', main_target.port or 22)} {other.with_suffix('.pub').read_text()}")
    target = SSHTarget(**{**main_target.__dict__, "known_hosts": str(wrong)})
    recorded = wrong.read_text()
    yes = YesToEverything()
    with pytest.raises(HostKeyChanged, match="CHANGED"):
        run(_use(connect(target, yes), lambda t: t.run(["true"])))
    assert yes.asked == [] and wrong.read_text() == recorded


def test_a_missing_known_hosts_file_trusts_no_host(connect, main_target, tmp_path: Path,  # noqa: ANN001
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The preset names a known_hosts file that does not exist: no host is known, whatever ~/.ssh/known_hosts
    says (asyncssh took an empty file argument for "use the default one" and connected)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(Path(main_target.known_hosts or "").read_text())
    monkeypatch.setenv("HOME", str(home))
    missing = tmp_path / "not-there" / "known_hosts"
    target = SSHTarget(**{**main_target.__dict__, "known_hosts": str(missing)})
    with pytest.raises(HostKeyUnknown):
        run(_use(connect(target), lambda t: t.run(["true"])))
    assert not missing.exists()


def test_revoked_host_key_is_refused(connect, main_target, tmp_path: Path, testbed) -> None:  # noqa: ANN001
    """The key is recorded, and also listed @revoked: every back end refuses it (paramiko accepted it)."""
    pub = next(Path(testbed.base_dir).glob("sshd/*ed25519*.pub")).read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(Path(main_target.known_hosts or "").read_text() + f"@revoked * {pub[0]} {pub[1]}\n")
    target = SSHTarget(**{**main_target.__dict__, "known_hosts": str(known)})
    with pytest.raises(HostKeyRevoked, match="REVOKED"):
        run(_use(connect(target), lambda t: t.run(["true"])))


def test_a_certificate_authority_line_is_not_a_host_key(connect, main_target, tmp_path: Path,  # noqa: ANN001
                                                        testbed) -> None:  # noqa: ANN001
    """The server's own key listed as a certificate authority vouches for certificates only, not for itself;
    lines that do not parse are skipped (asyncssh raised a bare ValueError for the whole file)."""
    pub = next(Path(testbed.base_dir).glob("sshd/*ed25519*.pub")).read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority * {pub[0]} {pub[1]}\n@cert-authority\n@revoked x\n")
    target = SSHTarget(**{**main_target.__dict__, "known_hosts": str(known)})
    # asyncssh, trusting a CA only, asks for a host certificate, which this server has not: no session either.
    with pytest.raises(ConnectionFailed if connect.backend == "asyncssh" else HostKeyUnknown):
        run(_use(connect(target), lambda t: t.run(["true"])))


@pytest.mark.parametrize("key_name", ["id_ecdsa", "id_rsa"])
def test_key_types(connect, main_target, client: Path, key_name: str) -> None:  # noqa: ANN001
    target = SSHTarget(**{**main_target.__dict__, "key_files": (str(client / key_name),)})
    assert run(_use(connect(target), lambda t: t.run(["echo", "ok"]))).stdout == "ok\n"


def test_encrypted_key_asks_once(connect, main_target, client: Path, testbed) -> None:  # noqa: ANN001
    answers = Answers(passphrase=testbed.ssh_lab.key_passphrase)
    target = SSHTarget(**{**main_target.__dict__, "key_files": (str(client / "id_ed25519_enc"),)})

    async def work(t: Transport) -> None:
        for _ in range(3):
            await t.run(["true"])

    run(_use(connect(target, answers), work))
    assert len(answers.asked) == 1 and answers.asked[0].startswith("passphrase")


def test_wrong_passphrase_fails_cleanly(connect, main_target, client: Path) -> None:  # noqa: ANN001
    target = SSHTarget(**{**main_target.__dict__, "key_files": (str(client / "id_ed25519_enc"),)})
    with pytest.raises(AuthenticationFailed):
        run(_use(connect(target, Answers(passphrase="not the passphrase")), lambda t: t.run(["true"])))


def test_agent(connect, main_target, testbed, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SSH_AUTH_SOCK", str(testbed.ssh_lab.agent_socket))
    target = SSHTarget(**{**main_target.__dict__, "key_files": (), "use_agent": True})
    assert run(_use(connect(target), lambda t: t.run(["echo", "agent"]))).stdout == "agent\n"


@pytest.mark.usefixtures("totp_turn")
def test_totp_is_asked_once_per_connection(connect, main_target, testbed) -> None:  # noqa: ANN001
    lab = testbed.ssh_lab
    # pam_oath refuses a code twice (replay protection): the lab hands out one not used yet.
    answers = Answers(code=lab.fresh_totp)
    target = SSHTarget(**{**main_target.__dict__, "port": lab.totp_port})

    async def work(t: Transport) -> None:
        for _ in range(3):
            assert (await t.run(["echo", "mfa"])).stdout == "mfa\n"

    run(_use(connect(target, answers), work))
    assert [a for a in answers.asked if a.startswith("kbdint")] and len(answers.asked) == 1


# ---- config, jump hosts, forwards -------------------------------------------------------------


def test_ssh_config_alias(connect, testbed) -> None:  # noqa: ANN001
    target = SSHTarget(host="tb-main", ssh_config=str(testbed.ssh_lab.ssh_config), use_agent=False)
    done = run(_use(connect(target), lambda t: t.run(["sh", "-c", 'echo "$USER $SSH_CONNECTION"'])))
    user, _client, _cport, server, sport = done.stdout.split()
    assert (user, server, sport) == (testbed.user, "127.0.0.1", str(testbed.ssh_port))


def test_proxy_jump_from_config_and_from_the_preset(connect, testbed, main_target) -> None:  # noqa: ANN001
    lab = testbed.ssh_lab
    via_config = SSHTarget(host="tb-inner", ssh_config=str(lab.ssh_config), use_agent=False)
    explicit = SSHTarget(
        host=lab.inner_host,
        port=lab.inner_port,
        user=testbed.user,
        key_files=main_target.key_files,
        known_hosts=main_target.known_hosts,
        proxy_jump=f"{testbed.user}@{lab.jump_host}:{lab.jump_port}",
        ssh_config="none",
        use_agent=False,
    )
    for target in (via_config, explicit):
        done = run(_use(connect(target), lambda t: t.run(["sh", "-c", 'echo "$SSH_CONNECTION"'])))
        # The inner sshd sees the jump host's loopback as its client: the path really went through it.
        assert done.stdout.split()[2:] == ["127.0.0.1", str(lab.inner_port)]


def test_forward_reaches_what_only_the_server_can_reach(connect, testbed, main_target) -> None:  # noqa: ANN001
    lab = testbed.ssh_lab
    target = SSHTarget(
        host=lab.jump_host,
        port=lab.jump_port,
        user=testbed.user,
        key_files=main_target.key_files,
        known_hosts=main_target.known_hosts,
        ssh_config="none",
        use_agent=False,
    )

    async def work(t: Transport) -> tuple[int, str]:
        forward = await t.forward("127.0.0.1", lab.echo_port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", forward.local_port)
            greeting = (await asyncio.wait_for(reader.readline(), 10)).decode()
            writer.write(b"ping\n")
            await writer.drain()
            echoed = (await asyncio.wait_for(reader.readline(), 10)).decode()
            writer.close()
            assert echoed == "ping\n"
            return forward.local_port, greeting
        finally:
            await forward.close()

    _port, greeting = run(_use(connect(target), work))
    assert greeting.strip() == f"braas-echo {lab.echo_token}"
    with pytest.raises(OSError):  # this side's 127.0.0.1 has no such listener: only the tunnel reaches it
        socket.create_connection(("127.0.0.1", lab.echo_port), timeout=2).close()
