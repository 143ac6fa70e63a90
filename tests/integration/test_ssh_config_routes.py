"""Routes that ~/.ssh/config sets up, taken for real by every back end: Include, ProxyJump in its
ssh:// and chained forms, ProxyCommand with %-tokens; options a back end cannot honour are refused.

The inner sshd of the lab listens on 127.0.0.1:2200 inside the login host's network namespace, so a
session on it proves the connection went through the jump host (or the ProxyCommand) as configured.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc.core.errors import AuthenticationFailed, ConnectionFailed, PresetError
from braas_hpc.core.transport import SSHTarget, Transport, make_transport
from tests.testbed import sshlab

BACKENDS = ("asyncssh", "paramiko", "openssh")


def _config(testbed, tmp_path: Path) -> Path:  # noqa: ANN001
    lab = testbed.ssh_lab
    user = testbed.user
    text = f"""\
Include {lab.ssh_config}
# `ssh -G` rewrites a lone ssh:// jump as user@host:port, but passes a chain as written.
Host route-url
    ProxyJump ssh://{user}@tb-main:{testbed.ssh_port},ssh://{user}@tb-jump:{sshlab.JUMP_PORT}
Host route-chain
    ProxyJump tb-main,{user}@{sshlab.NS_ADDR}
Host route-command
    ProxyCommand ${{BRAAS_NO_SUCH_VARIABLE:-ssh}} -F {lab.ssh_config} -o BatchMode=yes -W %h:%p tb-jump 2>/dev/null
Host route-alias
    HostKeyAlias somewhere-else
Host route-*
    HostName {lab.inner_host}
    Port {lab.inner_port}
    User {user}
    IdentityFile {testbed.key_file}
    IdentitiesOnly yes
    UserKnownHostsFile {lab.known_hosts}
    StrictHostKeyChecking yes
# The jump host by its address: the second hop of route-chain.
Host {sshlab.NS_ADDR}
    User {user}
    IdentityFile {testbed.key_file}
    UserKnownHostsFile {lab.known_hosts}
"""
    path = tmp_path / "config"
    path.write_text(text)
    return path


async def _where(transport: Transport) -> list[str]:
    try:
        done = await transport.run(["sh", "-c", 'echo "$SSH_CONNECTION"; hostname'])
    finally:
        await transport.close()
    return done.stdout.split()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alias", ["route-url", "route-chain", "route-command"])
def test_configured_route_reaches_the_inner_host(testbed, tmp_path: Path, backend: str, alias: str) -> None:  # noqa: ANN001
    lab = testbed.ssh_lab
    with pytest.raises(ConnectionRefusedError):  # not reachable directly: only the configured route gets there
        socket.create_connection(("127.0.0.1", lab.inner_port), timeout=2).close()
    target = SSHTarget(host=alias, ssh_config=str(_config(testbed, tmp_path)), use_agent=False, connect_timeout=15)
    words = asyncio.run(_where(make_transport(backend, target)))
    assert words[2:] == ["127.0.0.1", str(lab.inner_port), lab.inner_hostname]


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_option_the_back_end_cannot_honour_is_refused(testbed, tmp_path: Path, backend: str) -> None:  # noqa: ANN001
    target = SSHTarget(host="route-alias", ssh_config=str(_config(testbed, tmp_path)), use_agent=False)
    with pytest.raises(PresetError, match=f"the {backend} back end cannot use hostkeyalias somewhere-else"):
        asyncio.run(_where(make_transport(backend, target)))


# ---- Certificates (Leonardo's step-ca login): a private sshd on loopback that accepts only certificates of a
# test CA (TrustedUserCAKeys, no authorized_keys), the certificate in a file (CertificateFile) or in the agent --


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path, *extra: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path), *extra], check=True)


@pytest.fixture
def cert_sshd(testbed, tmp_path: Path) -> Iterator[tuple[int, Path]]:  # noqa: ANN001
    """(port, ssh config) of an sshd whose only way in is a certificate signed by our CA; the config names
    the certificate with CertificateFile (not the <key>-cert.pub that clients find on their own)."""
    d = tmp_path / "cert"
    d.mkdir()
    for name in ("ca", "user", "host"):
        _keygen(d / name)
    subprocess.run(["ssh-keygen", "-q", "-s", str(d / "ca"), "-I", "braas-test", "-n", testbed.user, "-V", "+1h",
                    str(d / "user.pub")], check=True)
    (d / "user-cert.pub").rename(d / "signed-by-ca.pub")
    port = _free_port()
    (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {d / "host"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile none
TrustedUserCAKeys {d / "ca.pub"}
AllowUsers {testbed.user}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
""")
    kind, blob = (d / "host.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    config = d / "config"
    config.write_text(f"""\
Host cert-only
    HostName 127.0.0.1
    Port {port}
    User {testbed.user}
    IdentityFile {d / "user"}
    CertificateFile {d / "signed-by-ca.pub"}
    IdentitiesOnly yes
    UserKnownHostsFile {d / "known_hosts"}
""")
    sshd = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=(d / "sshd.log").open("w"))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert sshd.poll() is None, (d / "sshd.log").read_text()
                time.sleep(0.1)
        yield port, config
    finally:
        sshd.terminate()
        sshd.wait(10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_certificate_file_logs_in(cert_sshd: tuple[int, Path], backend: str) -> None:
    port, config = cert_sshd
    target = SSHTarget(host="cert-only", ssh_config=str(config), use_agent=False, connect_timeout=15)
    words = asyncio.run(_where(make_transport(backend, target)))
    assert words[2:4] == ["127.0.0.1", str(port)]


@pytest.fixture
def cert_in_agent(cert_sshd: tuple[int, Path], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Path, Path]]:
    """As `step ssh login` leaves it: the key and its certificate only in an ssh-agent (a private one, its
    socket in a 0700 directory), no key file on disk; the ssh config names neither. Yields (port, config,
    agent socket)."""
    port, _config_with_file = cert_sshd
    d = tmp_path / "cert"
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir(mode=0o700)
    shutil.copy(d / "user", agent_dir / "id")
    shutil.copy(d / "signed-by-ca.pub", agent_dir / "id-cert.pub")  # ssh-add adds a key's -cert.pub with it
    sock = agent_dir / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        added = subprocess.run(["ssh-add", str(agent_dir / "id")], env=env, capture_output=True, text=True)
        assert "Certificate added" in added.stderr, added.stderr
        for name in ("id", "id-cert.pub"):
            (agent_dir / name).unlink()
        listed = subprocess.run(["ssh-add", "-L"], env=env, capture_output=True, text=True).stdout
        assert "-cert-v01@openssh.com" in listed, listed
        config = tmp_path / "agent-config"
        config.write_text(f"Host cert-agent\n    HostName 127.0.0.1\n    Port {port}\n    User {_signed_user(d)}\n"
                          f"    UserKnownHostsFile {d / 'known_hosts'}\n")
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh keys of the machine's own user in the way
        yield port, config, sock
    finally:
        agent.terminate()
        agent.wait(10)


def _signed_user(cert_dir: Path) -> str:
    """The cluster user the test CA signed for (the fixture's config says it)."""
    return next(line.split()[1] for line in (cert_dir / "config").read_text().splitlines()
                if line.strip().startswith("User "))


@pytest.mark.parametrize("backend", BACKENDS)
def test_certificate_in_the_agent_logs_in(cert_in_agent: tuple[int, Path, Path], backend: str) -> None:
    port, config, _sock = cert_in_agent
    target = SSHTarget(host="cert-agent", ssh_config=str(config), use_agent=True, connect_timeout=15)
    words = asyncio.run(_where(make_transport(backend, target)))
    assert words[2:4] == ["127.0.0.1", str(port)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_key_without_its_certificate_is_refused(cert_in_agent: tuple[int, Path, Path], backend: str) -> None:
    """The sshd trusts the CA only: the same key, its certificate removed from the agent, gets no session."""
    _port, config, sock = cert_in_agent
    env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
    plain = subprocess.run(["ssh-add", "-L"], env=env, capture_output=True, text=True).stdout.splitlines()
    cert_line = next(line for line in plain if "-cert-v01@openssh.com" in line)
    certificate = Path(str(sock) + ".cert.pub")
    certificate.write_text(cert_line + "\n")
    done = subprocess.run(["ssh-add", "-d", str(certificate)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    left = subprocess.run(["ssh-add", "-L"], env=env, capture_output=True, text=True).stdout
    assert "-cert-v01@openssh.com" not in left and "ssh-ed25519" in left, left  # the plain key is still there
    target = SSHTarget(host="cert-agent", ssh_config=str(config), use_agent=True, connect_timeout=15)
    with pytest.raises(AuthenticationFailed):
        asyncio.run(_where(make_transport(backend, target)))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose connections time out, as a cluster behind a gateway does: its listen queue is
    full (held by one connection nobody accepts), so further connection requests go unanswered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    held = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        yield port
    finally:
        held.close()
        server.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_out_without_a_proxy_hints_at_one(tmp_path: Path, silent_port: int, backend: str) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host far-cluster\n    HostName 127.0.0.1\n    Port {silent_port}\n    User nobody\n")
    target = SSHTarget(host="far-cluster", ssh_config=str(config), use_agent=False, connect_timeout=2)
    with pytest.raises(ConnectionFailed, match="no ProxyJump or ProxyCommand applies to far-cluster"):
        asyncio.run(_where(make_transport(backend, target)))
