"""Self-check of the system OpenSSH back end against the test cluster (the contract suite covers all back ends)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from braas_hpc.core.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    RemoteCommandError,
)
from braas_hpc.core.transport import openssh
from braas_hpc.core.transport.base import PART_SUFFIX, SSHTarget, Transport
from braas_hpc.core.transport.openssh import OpenSSHTransport
from tests.helpers import Answers, sha256

pytestmark = pytest.mark.testbed
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def use(transport: OpenSSHTransport, work: Callable[[OpenSSHTransport], Awaitable[T]]) -> T:
    try:
        return await work(transport)
    finally:
        await transport.close()



@pytest.fixture
def target(testbed: Any) -> SSHTarget:
    return SSHTarget(host="127.0.0.1", port=testbed.ssh_port, user=testbed.user, key_files=(str(testbed.key_file),),
                     known_hosts=str(testbed.known_hosts), ssh_config="none", use_agent=False)


@pytest.fixture
def workdir(testbed: Any) -> str:
    return f"{testbed.workdir}/openssh-selfcheck-{secrets.token_hex(6)}"


def with_(target: SSHTarget, **changes: Any) -> SSHTarget:
    return SSHTarget(**{**target.__dict__, **changes})


# ---- commands -----------------------------------------------------------------------------------


def test_arguments_verbatim_failures_and_reuse(target: SSHTarget) -> None:
    canary = f"/tmp/braas-openssh-canary-{secrets.token_hex(6)}"
    args = ["a b", "it's", 'say "hi"', f"$(touch {canary})", f"`touch {canary}`", f"x;touch {canary}", "a\nb", "",
            "ü ✓", "*", "-n", "$HOME", "\\", "%h %%"]

    async def work(t: OpenSSHTransport) -> list[float]:
        done = await t.run(["printf", "%s\\0", *args])
        assert done.stdout.split("\0")[:-1] == args
        assert (await t.run(["test", "-e", canary], check=False)).exit_status == 1
        with pytest.raises(RemoteCommandError) as info:
            await t.run(["sh", "-c", "echo oops >&2; exit 3"])
        assert info.value.exit_status == 3 and "oops" in str(info.value)
        # A command's own exit status 255 is not a lost connection.
        assert (await t.run(["sh", "-c", "exit 255"], check=False)).exit_status == 255
        assert (await t.run(["cat"], stdin="through stdin\n")).stdout == "through stdin\n"
        with pytest.raises(TimeoutError):
            await t.run(["sleep", "10"], timeout=1)
        # Every call reuses the master: its socket exists, and each command costs milliseconds.
        assert os.path.exists(t._control_path)
        ports, timings = set(), []
        for _ in range(5):
            started = time.perf_counter()
            ports.add((await t.run(["sh", "-c", 'echo "$SSH_CONNECTION"'])).stdout.split()[1])
            timings.append(time.perf_counter() - started)
        assert len(ports) == 1
        return timings

    timings = run(use(OpenSSHTransport(target), work))
    print(f"one command on an open master: {min(timings) * 1000:.1f} ms (median "
          f"{sorted(timings)[2] * 1000:.1f} ms)")  # a figure for the reader; reuse is proven by the one port


def test_reconnects_after_the_master_went_away(target: SSHTarget) -> None:
    async def work(t: OpenSSHTransport) -> list[str]:
        await t.run(["true"])
        await t._control("exit")  # as after an idle ControlPersist timeout: the socket is gone
        back = [(await t.run(["echo", "after exit"])).stdout]
        _, _, said = await t._control("check")
        os.kill(int(said.split("pid=")[1].split(")")[0]), signal.SIGKILL)  # a stale socket is left behind
        # A killed master is a dropped link: the call that meets it may fail (the command had been
        # handed to the remote shell, so whether it ran is unknown); the next one reconnects.
        with contextlib.suppress(ConnectionLost):
            back.append((await t.run(["echo", "after kill"])).stdout)
        if len(back) == 1:
            back.append((await t.run(["echo", "after kill"])).stdout)
        return back

    # After an orderly exit the command never started, so it runs on a new master without an error.
    assert run(use(OpenSSHTransport(target), work)) == ["after exit\n", "after kill\n"]


def test_stream_lines_arrive_live(target: SSHTarget) -> None:
    async def work(t: OpenSSHTransport) -> list[tuple[float, str]]:
        started = time.monotonic()
        return [(time.monotonic() - started, line.text)
                async for line in t.stream(["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.4; done"])]

    got = run(use(OpenSSHTransport(target), work))
    assert [text for _, text in got] == ["line 1", "line 2", "line 3"]
    assert got[0][0] < got[2][0] - 0.5


# ---- files --------------------------------------------------------------------------------------


def test_put_get_resume_and_listdir(target: SSHTarget, workdir: str, tmp_path: Path) -> None:
    local = tmp_path / "data.bin"
    local.write_bytes(os.urandom(20 * 1024 * 1024 + 3))
    half = local.read_bytes()[: local.stat().st_size // 2]
    seen: list[tuple[int, int]] = []
    odd = "name with spaces\nand a newline 'q' $(x)"

    async def work(t: OpenSSHTransport) -> dict[str, tuple[int, bool]]:
        await t.run(["mkdir", "-p", f"{workdir}/sub dir"])
        await t.put(local, f"{workdir}/data.bin", lambda done, total: seen.append((done, total)))
        back = tmp_path / "back.bin"
        await t.get(f"{workdir}/data.bin", back)
        assert sha256(back) == sha256(local)
        # Resumed upload: a temp file with the first half is there, as a dropped connection leaves it.
        await t.run(["sh", "-c", f'cat > "$1/.again.bin{PART_SUFFIX}"', "sh", workdir], stdin=half)
        await t.put(local, f"{workdir}/again.bin")
        assert await t.sha256(f"{workdir}/again.bin") == sha256(local)
        # Resumed download, likewise.
        (tmp_path / f".again.bin{PART_SUFFIX}").write_bytes(half)
        await t.get(f"{workdir}/again.bin", tmp_path / "again.bin")
        assert sha256(tmp_path / "again.bin") == sha256(local)
        await t.run(["touch", f"{workdir}/{odd}"])
        assert await t._size(f"{workdir}/missing") is None
        assert await t.listdir(f"{workdir}/missing") == []
        entries = {e.name: (e.size, e.is_dir) for e in await t.listdir(workdir)}
        await t.run(["rm", "-rf", workdir])
        return entries

    entries = run(use(OpenSSHTransport(target), work))
    size = local.stat().st_size
    assert entries.pop("sub dir")[1] is True
    assert entries == {"data.bin": (size, False), "again.bin": (size, False), odd: (0, False)}
    assert len(seen) > 2 and seen[-1] == (size, size)


# ---- forwards -----------------------------------------------------------------------------------


async def _banner(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


def test_forward_reads_the_ssh_banner(target: SSHTarget) -> None:
    async def work(t: OpenSSHTransport) -> int:
        forward = await t.forward("127.0.0.1", target.port or 22)
        assert (forward.remote_host, forward.remote_port) == ("127.0.0.1", target.port)
        assert (await _banner(forward.local_port)).startswith(b"SSH-2.0-")
        await forward.close()
        with pytest.raises(OSError):
            await _banner(forward.local_port)
        return forward.local_port

    run(use(OpenSSHTransport(target), work))


# ---- trust and authentication -------------------------------------------------------------------


def test_unknown_and_changed_host_keys(target: SSHTarget, testbed: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyUnknown) as info:
        run(use(OpenSSHTransport(with_(target, known_hosts=str(empty))), lambda t: t.run(["true"])))
    pub = Path(testbed.base_dir) / "sshd" / "ssh_host_ed25519_key.pub"
    listed = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True)
    assert info.value.fingerprint.startswith("SHA256:") and info.value.fingerprint == listed.stdout.split()[1]
    assert info.value.key_type == "ssh-ed25519" and info.value.public_key.split()[:2] == pub.read_text().split()[:2]
    assert empty.read_text() == ""

    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{target.port} {other.with_suffix('.pub').read_text()}")
    with pytest.raises(HostKeyChanged, match="CHANGED"):
        run(use(OpenSSHTransport(with_(target, known_hosts=str(wrong))), lambda t: t.run(["true"])))


def test_awkward_known_hosts_path(target: SSHTarget, testbed: Any, tmp_path: Path) -> None:
    # ssh splits -o values like config lines and expands %-tokens in this path: both must be escaped.
    odd = tmp_path / "dir with space %h #x" / "known hosts"
    odd.parent.mkdir()
    shutil.copy(testbed.known_hosts, odd)
    assert run(use(OpenSSHTransport(with_(target, known_hosts=str(odd))), lambda t: t.run(["echo", "ok"]))).stdout \
        == "ok\n"


def test_encrypted_key_is_asked_once(target: SSHTarget, testbed: Any) -> None:
    lab = testbed.ssh_lab
    answers = Answers(passphrase=lab.key_passphrase)
    transport = OpenSSHTransport(with_(target, key_files=(str(lab.key_ed25519_enc),)), answers)

    async def work(t: OpenSSHTransport) -> None:
        for _ in range(3):
            await t.run(["true"])
        await t._control("exit")  # a new connection: the passphrase is remembered in memory, not asked again
        await t.run(["true"])

    run(use(transport, work))
    assert answers.asked == [f"passphrase {lab.key_ed25519_enc}"]

    wrong = Answers(passphrase="not it")
    with pytest.raises(AuthenticationFailed):
        run(use(OpenSSHTransport(with_(target, key_files=(str(lab.key_ed25519_enc),)), wrong),
                lambda t: t.run(["true"])))
    assert wrong.asked and all(a.startswith("passphrase") for a in wrong.asked)
    with pytest.raises(AuthenticationFailed):  # no Prompts: BatchMode, nothing asked, a clean refusal
        run(use(OpenSSHTransport(with_(target, key_files=(str(lab.key_ed25519_enc),))), lambda t: t.run(["true"])))


@pytest.mark.usefixtures("totp_turn")
def test_one_time_code_through_askpass(target: SSHTarget, testbed: Any) -> None:
    lab = testbed.ssh_lab
    answers = Answers(code=lab.fresh_totp)

    async def work(t: OpenSSHTransport) -> list[str]:
        return [(await t.run(["echo", "mfa"])).stdout for _ in range(2)]

    assert run(use(OpenSSHTransport(with_(target, port=lab.totp_port), answers), work)) == ["mfa\n"] * 2
    assert len(answers.asked) == 1 and "One-time password" in answers.asked[0]
    assert f"({testbed.user}@" not in answers.asked[0]  # ssh's "(user@host) " prefix is taken off


# ---- config and jump hosts ----------------------------------------------------------------------


def test_jump_host_from_target_and_from_config(target: SSHTarget, testbed: Any) -> None:
    lab = testbed.ssh_lab
    explicit = with_(target, host=lab.inner_host, port=lab.inner_port,
                     proxy_jump=f"{testbed.user}@{lab.jump_host}:{lab.jump_port}")
    via_config = SSHTarget(host="tb-inner", ssh_config=str(lab.ssh_config), use_agent=False)
    for jumped in (explicit, via_config):
        done = run(use(OpenSSHTransport(jumped), lambda t: t.run(["sh", "-c", 'echo "$SSH_CONNECTION"'])))
        assert done.stdout.split()[2:] == ["127.0.0.1", str(lab.inner_port)]

    # A jump host's key is checked against the same known_hosts: an empty one stops the first hop.
    with pytest.raises(ConnectionFailed, match="host key"):
        run(use(OpenSSHTransport(with_(explicit, known_hosts="/dev/null")), lambda t: t.run(["true"])))


# ---- without multiplexing (the Windows branch, exercised here) ----------------------------------


def test_options_and_the_branch_without_multiplexing(target: SSHTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = openssh.ssh_options(target, batch=True)
    assert opts[:2] == ["-F", "none"] and "StrictHostKeyChecking=yes" in opts and "BatchMode=yes" in opts
    assert "IdentityAgent=none" in opts and "IdentitiesOnly=yes" in opts
    assert "BatchMode=yes" not in openssh.ssh_options(target, batch=False)
    assert openssh.split_jump("u@[::1]:2200") == ("::1", "u", "2200")
    assert openssh.split_jump("ssh://h") == ("h", None, None)

    monkeypatch.setattr(openssh.client, "WINDOWS", True)  # what Client() reads
    transport = OpenSSHTransport(target)
    argv = transport._client_argv()
    assert "ControlMaster=no" in argv and "ControlPath=none" in argv and not transport._can_prompt()
    monkeypatch.setattr(openssh.client, "WINDOWS", False)

    async def work(t: Transport) -> bytes:
        assert (await t.run(["echo", "direct"])).stdout == "direct\n"
        forward = await t.forward("127.0.0.1", target.port or 22)
        try:
            return await _banner(forward.local_port)
        finally:
            await forward.close()

    transport._mux = False  # what Windows gets: a connection per call, a process per forward
    assert run(use(transport, work)).startswith(b"SSH-2.0-")


def test_missing_ssh_program(target: SSHTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConnectionFailed, match="not installed"):
        run(use(OpenSSHTransport(target), lambda t: t.run(["true"])))
