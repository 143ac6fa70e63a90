"""The SSH lab of the test cluster, proven with the real OpenSSH client.

Every login names the key it must have used; which key the server accepted is read back from the
server's log (main sshd) by the client port in $SSH_CONNECTION, so a fallback to another key of
the config cannot pass a test by accident.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pyotp
import pytest

from tests.testbed import testbed as tb
from tests.testbed.sshlab import SSHLab
from tests.testbed.tcpproxy import running_proxy

pytestmark = pytest.mark.testbed

TIMEOUT = 30


@pytest.fixture(scope="module")
def lab(testbed: tb.Testbed) -> SSHLab:
    return testbed.ssh_lab


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that could feed ssh a key or an answer."""
    drop = ("SSH_AUTH_SOCK", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def _ssh(lab: SSHLab, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(lab.ssh_config), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env or _env(),
        stdin=subprocess.DEVNULL,
    )


def _fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def _accepted_fingerprint(log: Path, client_port: str) -> str:
    """The key the server accepted for the connection from `client_port`."""
    pattern = re.compile(rf"Accepted publickey for \S+ from \S+ port {client_port} ssh2: \S+ (\S+)")
    for _ in range(20):  # written before the session starts, but allow for buffering
        if found := pattern.findall(log.read_text(errors="replace")):
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no 'Accepted publickey' for port {client_port} in {log}")


def _askpass(tmp_path: Path, answer: str) -> tuple[dict[str, str], Path]:
    """OpenSSH asks SSH_ASKPASS for passphrases and keyboard-interactive prompts alike."""
    script, asked = tmp_path / "askpass", tmp_path / "asked"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{asked}"\nprintf "%s\\n" "$BRAAS_ANSWER"\n')
    script.chmod(0o700)
    env = _env(SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", BRAAS_ANSWER=answer)
    return env, asked


def _log_for(lab: SSHLab, host: str) -> Path:
    return lab.logs[host.removeprefix("tb-")]


# --------------------------------------------------------------------------------------------
# keys


@pytest.mark.parametrize("host", ["tb-main", "tb-jump", "tb-inner"])
@pytest.mark.parametrize("key", ["key_ed25519", "key_ecdsa", "key_rsa"])
def test_each_key_type_logs_in(lab: SSHLab, host: str, key: str) -> None:
    key_file: Path = getattr(lab, key)
    done = _ssh(lab, "-o", "BatchMode=yes", "-i", str(key_file), host, 'echo "$SSH_CONNECTION"')
    assert done.returncode == 0, done.stderr
    client_port = done.stdout.split()[1]
    assert _accepted_fingerprint(_log_for(lab, host), client_port) == _fingerprint(key_file.with_suffix(".pub"))


def test_encrypted_key_with_passphrase(lab: SSHLab, tmp_path: Path) -> None:
    key = lab.key_ed25519_enc
    wrong = subprocess.run(["ssh-keygen", "-y", "-P", "wrong", "-f", str(key)], capture_output=True)
    assert wrong.returncode != 0, "the key must really be encrypted"

    env, asked = _askpass(tmp_path, lab.key_passphrase)
    done = _ssh(lab, "-i", str(key), "tb-main", 'echo "$SSH_CONNECTION"', env=env)
    assert done.returncode == 0, done.stderr
    assert "passphrase" in asked.read_text().lower()
    assert _accepted_fingerprint(lab.logs["main"], done.stdout.split()[1]) == _fingerprint(key.with_suffix(".pub"))


def test_agent_key(lab: SSHLab, tmp_path: Path) -> None:
    # Only the public half beside the client: ssh can sign with it only through the agent.
    pub = tmp_path / "agent_key.pub"
    shutil.copy(lab.agent_public_key, pub)
    env = _env(SSH_AUTH_SOCK=str(lab.agent_socket))
    listed = subprocess.run(["ssh-add", "-l"], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert _fingerprint(pub) in listed.stdout

    done = _ssh(lab, "-o", "BatchMode=yes", "-i", str(pub), "tb-main", 'echo "$SSH_CONNECTION"', env=env)
    assert done.returncode == 0, done.stderr
    assert _accepted_fingerprint(lab.logs["main"], done.stdout.split()[1]) == _fingerprint(pub)


# --------------------------------------------------------------------------------------------
# TOTP


@pytest.mark.usefixtures("totp_turn")
def test_totp_login_with_pyotp_code(lab: SSHLab, tmp_path: Path) -> None:
    for _ in range(2):  # twice: the second login needs a later step (pam_oath refuses replays)
        when = lab.fresh_totp_time()
        code = pyotp.TOTP(lab.totp_secret_base32).at(when)
        assert code == lab.totp_at(when)
        env, asked = _askpass(tmp_path, code)
        done = _ssh(lab, "-o", "NumberOfPasswordPrompts=1", "tb-totp", 'cat "$SSH_USER_AUTH"', env=env)
        assert done.returncode == 0, done.stderr
        assert "One-time password (OATH)" in asked.read_text()
        methods = [line.split()[0] for line in done.stdout.splitlines()]
        assert methods == ["publickey", "keyboard-interactive/pam"], done.stdout


@pytest.mark.usefixtures("totp_turn")
def test_totp_refuses_wrong_code_and_key_alone(lab: SSHLab, tmp_path: Path) -> None:
    env, _ = _askpass(tmp_path, lab.totp_at(time.time() - 3600))  # a real code, an hour old
    wrong = _ssh(lab, "-o", "NumberOfPasswordPrompts=1", "tb-totp", "true", env=env)
    assert wrong.returncode == 255 and "Permission denied" in wrong.stderr

    key_only = _ssh(lab, "-o", "BatchMode=yes", "tb-totp", "true")
    assert key_only.returncode == 255 and "Permission denied" in key_only.stderr


# --------------------------------------------------------------------------------------------
# the login host's namespace


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_inner_host_only_through_jump(lab: SSHLab) -> None:
    jump = _ssh(lab, "-o", "BatchMode=yes", "tb-jump", "hostname")
    assert jump.returncode == 0, jump.stderr
    assert jump.stdout.strip() == lab.jump_hostname

    inner = _ssh(lab, "-o", "BatchMode=yes", "tb-inner", 'hostname; echo "$SSH_CONNECTION"')
    assert inner.returncode == 0, inner.stderr
    name, connection = inner.stdout.splitlines()
    assert name == lab.inner_hostname
    assert connection.split()[2:] == [lab.inner_host, str(lab.inner_port)]

    assert _refused(lab.inner_port), "127.0.0.1:2200 must exist only inside the namespace"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_forward_through_jump_reaches_echo(lab: SSHLab) -> None:
    assert _refused(lab.echo_port), "the echo server must exist only inside the namespace"
    port = _free_port()
    forward = f"127.0.0.1:{port}:127.0.0.1:{lab.echo_port}"
    cmd = ["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    proc = subprocess.Popen([*cmd, "-N", "-L", forward, "tb-jump"], env=_env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert proc.poll() is None, "ssh -L exited"
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the forward never listened"
                time.sleep(0.1)
        with sock, sock.makefile("rb") as stream:
            assert stream.readline() == f"braas-echo {lab.echo_token}\n".encode()
            payload = secrets.token_hex(32).encode() + b"\n"
            sock.sendall(payload)
            assert stream.readline() == payload
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


# --------------------------------------------------------------------------------------------
# the fault proxy


def test_proxy_cuts_scp_then_lets_it_through(lab: SSHLab, tmp_path: Path) -> None:
    data = tmp_path / "payload.bin"
    data.write_bytes(os.urandom(5 * 1024 * 1024))
    remote = f"work/sshlab-{secrets.token_hex(4)}.bin"
    with running_proxy(lab.main_host, lab.main_port, drop_after_bytes=1_000_000) as proxy:
        scp = [
            "scp",
            "-F",
            str(lab.ssh_config),
            "-o",
            "BatchMode=yes",
            "-P",
            str(proxy.port),
            # Through the proxy the address is 127.0.0.1:<proxy port>: check the main sshd's pin.
            "-o",
            f"HostKeyAlias=[{lab.main_host}]:{lab.main_port}",
            str(data),
            f"tb-main:{remote}",
        ]
        cut = subprocess.run(scp, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
        assert cut.returncode != 0, "the transfer should have been cut"
        assert proxy.drops == 1 and proxy.bytes_up == 1_000_000

        proxy.drop_after_bytes = None
        whole = subprocess.run(scp, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
        assert whole.returncode == 0, whole.stderr
        assert proxy.connections == 2 and proxy.drops == 1

    digest = subprocess.run(["sha256sum", str(data)], capture_output=True, text=True, check=True).stdout.split()[0]
    check = _ssh(lab, "-o", "BatchMode=yes", "tb-main", f"sha256sum {remote} && rm -f {remote}")
    assert check.returncode == 0, check.stderr
    assert check.stdout.split()[0] == digest


def test_client_files_pin_every_host(lab: SSHLab) -> None:
    lines = lab.known_hosts.read_text().splitlines()
    patterns = [line.split()[0] for line in lines]
    assert patterns == ["[127.0.0.1]:2222", "[127.0.0.1]:2223", "198.18.0.2", "[127.0.0.1]:2200"]
    config = lab.ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in config
    assert not re.search(r"StrictHostKeyChecking\s+(no|accept-new|off)", config)
