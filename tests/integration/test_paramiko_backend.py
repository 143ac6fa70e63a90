"""A quick self-check of the paramiko back end on the test cluster's main sshd.

The contract suite (test_transport_contract.py) holds every back end to the same behaviour; this
file checks the paramiko-specific paths it only reaches by accident: scp for whole files, SFTP for
resumed ones, the thread-fed streams and the hand-made forward.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from braas_hpc.core.errors import HostKeyChanged, HostKeyUnknown, RemoteCommandError
from braas_hpc.core.transport.base import SSHTarget, StreamLine
from braas_hpc.core.transport.hostkeys import host_pattern
from braas_hpc.core.transport.paramiko_ import ParamikoTransport

T = TypeVar("T")


def _target(testbed: Any, **changes: Any) -> SSHTarget:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": testbed.ssh_port,
        "user": testbed.user,
        "key_files": (str(testbed.key_file),),
        "known_hosts": str(testbed.known_hosts),
        "ssh_config": "none",
        "use_agent": False,  # the runner's own agent must not decide the outcome
    }
    return SSHTarget(**{**fields, **changes})


def _with(target: SSHTarget, work: Callable[[ParamikoTransport], Awaitable[T]]) -> T:
    async def main() -> T:
        async with ParamikoTransport(target) as transport:
            return await work(transport)

    return asyncio.run(main())  # pytest-asyncio is not installed


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_argv_is_passed_verbatim_and_failures_are_typed(testbed: Any) -> None:
    canary = f"/tmp/braas-paramiko-canary-{secrets.token_hex(6)}"
    args = ["a b", "it's", 'say "hi"', f"$(touch {canary})", f"`touch {canary}`", f"x;touch {canary}"]

    async def work(t: ParamikoTransport) -> None:
        done = await t.run(["printf", "%s\\n", *args])
        assert done.stdout.splitlines() == args
        assert (await t.run(["test", "-e", canary], check=False)).exit_status == 1
        with pytest.raises(RemoteCommandError) as info:
            await t.run(["sh", "-c", "echo broken >&2; exit 4"])
        assert info.value.exit_status == 4 and "broken" in info.value.stderr
        assert (await t.run(["cat"], stdin="in\n")).stdout == "in\n"

    _with(_target(testbed), work)
    assert not Path(canary).exists()


def test_put_get_and_listdir(testbed: Any, tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(20 * 1024 * 1024))
    remote_dir = f"{testbed.workdir}/paramiko-{secrets.token_hex(6)}"
    seen: list[tuple[int, int]] = []

    async def work(t: ParamikoTransport) -> list[tuple[str, int, bool]]:
        await t.run(["mkdir", "-p", f"{remote_dir}/sub"])
        await t.put(local, f"{remote_dir}/payload.bin", lambda done, total: seen.append((done, total)))
        assert await t.sha256(f"{remote_dir}/payload.bin") == _sha(local)
        await t.get(f"{remote_dir}/payload.bin", tmp_path / "back.bin")
        entries = [(e.name, e.size, e.is_dir) for e in await t.listdir(remote_dir)]
        assert await t.listdir(f"{remote_dir}/missing") == []
        await t.run(["rm", "-rf", remote_dir])
        return sorted(entries)

    entries = _with(_target(testbed), work)
    assert _sha(tmp_path / "back.bin") == _sha(local)
    assert [(name, is_dir) for name, _, is_dir in entries] == [("payload.bin", False), ("sub", True)]
    assert entries[0][1] == local.stat().st_size
    assert seen[-1] == (local.stat().st_size, local.stat().st_size)


def test_names_scp_would_misread(testbed: Any, tmp_path: Path) -> None:
    # Whole files go over scp: a newline or a leading dash must not break its protocol or command line.
    names = ["a\nb", "-n", "*", "$HOME", "it's", "ümlaut ✓"]
    remote_dir = f"{testbed.workdir}/paramiko-names-{secrets.token_hex(6)}"

    async def work(t: ParamikoTransport) -> list[str]:
        await t.run(["mkdir", "-p", remote_dir])
        for index, name in enumerate(names):
            source = tmp_path / f"source-{index}"
            source.write_bytes(os.urandom(1000 + index))
            await t.put(source, f"{remote_dir}/{name}")
            await t.get(f"{remote_dir}/{name}", tmp_path / f"back-{index}")
            assert (tmp_path / f"back-{index}").read_bytes() == source.read_bytes()
        listed = sorted(e.name for e in await t.listdir(remote_dir))
        await t.run(["rm", "-rf", remote_dir])
        return listed

    assert _with(_target(testbed), work) == sorted(names)


def test_transfers_resume_at_an_offset(testbed: Any, tmp_path: Path) -> None:
    # Offset > 0 is the SFTP path (scp cannot start mid-file): continue half-done copies both ways.
    data = os.urandom(5 * 1024 * 1024 + 7)
    half = len(data) // 2
    whole, first = tmp_path / "whole.bin", tmp_path / "first.bin"
    whole.write_bytes(data)
    first.write_bytes(data[:half])
    remote = f"{testbed.workdir}/paramiko-resume-{secrets.token_hex(6)}.bin"
    partial = tmp_path / "partial.bin"
    partial.write_bytes(data[:half] + b"junk past the offset")

    async def work(t: ParamikoTransport) -> str:
        await t._send(first, remote, 0, None)
        await t._send(whole, remote, half, None)
        digest = await t.sha256(remote)
        await t._receive(remote, partial, half, None)
        await t.run(["rm", "-f", remote])
        return digest

    assert _with(_target(testbed), work) == _sha(whole)
    assert partial.read_bytes() == data


def test_stream_yields_lines_as_they_come(testbed: Any) -> None:
    async def work(t: ParamikoTransport) -> list[tuple[float, StreamLine]]:
        started = time.monotonic()
        return [(time.monotonic() - started, line)
                async for line in t.stream(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done"])]

    got = _with(_target(testbed), work)
    assert [line for _, line in got] == [StreamLine("1"), StreamLine("2"), StreamLine("3")]
    assert got[0][0] < got[2][0] - 0.3  # live, not all at the end


def test_forward_reaches_the_sshd_banner(testbed: Any) -> None:
    async def work(t: ParamikoTransport) -> bytes:
        forward = await t.forward("127.0.0.1", testbed.ssh_port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", forward.local_port)
            banner = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return banner
        finally:
            await forward.close()

    assert _with(_target(testbed), work).startswith(b"SSH-2.0-")


def test_unknown_host_key_names_its_fingerprint(testbed: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyUnknown) as info:
        _with(_target(testbed, known_hosts=str(empty)), lambda t: t.run(["true"]))
    assert info.value.fingerprint.startswith("SHA256:") and info.value.fingerprint in str(info.value)
    assert empty.read_text() == ""


def test_changed_host_key_is_refused(testbed: Any, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{host_pattern('127.0.0.1', testbed.ssh_port)} {other.with_suffix('.pub').read_text()}")
    with pytest.raises(HostKeyChanged) as info:
        _with(_target(testbed, known_hosts=str(wrong)), lambda t: t.run(["true"]))
    assert info.value.fingerprint.startswith("SHA256:")
