"""The connection keeper against the test cluster, for each SSH back end: ten CLI commands to the TOTP sshd
ask one one-time code and log in once (read back from the sshd's own log); a connection cut under the
keeper is opened again by the next command; a refused host key keeps its type across the socket.

The suite runs with BRAAS_HPC_KEEPER=off (tests/conftest.py); these tests turn the keeper on, each with a
keeper directory of its own, and stop their keeper at the end.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pickle
import pty
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from braas_hpc import cli
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import target_for
from braas_hpc.core.transport.keeper import sockets
from braas_hpc.core.transport.keeper.client import KeptTransport
from braas_hpc.core.transport.keeper.server import SESSIONS_AT_ONCE
from braas_hpc.prompts import TerminalPrompts
from tests.blender.addon_runner import Session
from tests.conftest import run_cli
from tests.helpers import REPO, check_frame, sha256
from tests.integration.conftest import no_direct
from tests.integration.test_addon_ui import MAIN_LOOP
from tests.testbed import testbed as tb
from tests.testbed.sshlab import SSHLab
from tests.testbed.tcpproxy import running_proxy

pytestmark = pytest.mark.testbed

BACKENDS = ("asyncssh", "paramiko", "openssh")
COMMANDS = 10


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def lab(testbed: tb.Testbed) -> SSHLab:
    return testbed.ssh_lab


def write_preset(testbed: tb.Testbed, name: str, **changes: object) -> None:
    """The testbed preset under another name, with some keys replaced (`key = value` lines)."""
    lines = []
    for line in testbed.preset_file.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in changes:
            continue
        lines.append(f'name = "{name}"' if key == "name" else line)
    head = [f"{k} = {json.dumps(v)}" for k, v in changes.items()]
    first_table = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
    text = "\n".join([*lines[:first_table], *head, *lines[first_table:]]) + "\n"
    presets = Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets"
    presets.mkdir(exist_ok=True)
    (presets / f"{name}.toml").write_text(text)


class CodeUser:
    """A person at a terminal who types a fresh one-time code whenever asked, and is counted."""

    def __init__(self, lab: SSHLab) -> None:
        self.lab = lab
        self.codes: list[str] = []
        self.other: list[str] = []

    def answer(self, prompt: str) -> str:
        if "one-time" in prompt.lower() or "oath" in prompt.lower():
            self.codes.append(self.lab.fresh_totp())
            return self.codes[-1]
        self.other.append(prompt)
        return ""

    def prompts(self) -> TerminalPrompts:
        return TerminalPrompts(ask_secret=self.answer, ask=self.answer, interactive=True)


def _logins(lab: SSHLab) -> int:
    return lab.logs["totp"].read_text(errors="replace").count("Accepted keyboard-interactive")


def _cli(capsys: pytest.CaptureFixture[str], user: CodeUser | None, *argv: str) -> str:
    capsys.readouterr()
    code = cli.main(list(argv), user.prompts() if user else TerminalPrompts(interactive=False))
    out, err = capsys.readouterr()
    assert code == 0, out + err
    return out


def _become_terminal_owner() -> None:
    """In the child, after setsid: its stdin (the pty) becomes its controlling terminal, so getpass asks
    on it as on a real terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def on_terminal(argv: list[str], user: CodeUser, timeout: float = 120) -> tuple[int, str]:
    """One `braas-hpc` process on a terminal of its own (a pty), the user typing a fresh code at each
    one-time-code prompt. Returns its exit status and everything it printed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", *argv], stdin=follower, stdout=follower,
                               stderr=follower, start_new_session=True, preexec_fn=_become_terminal_owner,
                               cwd=REPO, env=os.environ.copy())
    os.close(follower)
    seen = b""
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the process closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if seen.count(b"One-time password") > answered:
                    answered += 1
                    os.write(leader, user.answer("One-time password").encode() + b"\n")
            elif process.poll() is not None:
                break
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), seen.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)


@pytest.mark.usefixtures("totp_turn")
def test_ten_commands_one_code(testbed: tb.Testbed, lab: SSHLab, keeper: Path, backend: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """Ten `braas-hpc test` processes, each on a terminal as a user runs them, to the TOTP sshd: one code."""
    _ten_commands(testbed, lab, keeper, backend, capsys)


def _ten_commands(testbed: tb.Testbed, lab: SSHLab, keeper: Path, backend: str, capsys: pytest.CaptureFixture[str],
                  while_kept: Callable[[], None] = lambda: None) -> None:
    name = f"tb-keep-{backend}"
    write_preset(testbed, name, port=lab.totp_port, ssh_backend=backend, known_hosts=str(lab.known_hosts))
    user = CodeUser(lab)
    before = _logins(lab)
    for _ in range(COMMANDS):
        status, shown = on_terminal(["test", name], user)
        assert status == 0, shown
        assert "writable" in shown, shown
    assert len(user.codes) == 1, f"{len(user.codes)} codes asked for {COMMANDS} commands"
    assert user.other == []
    assert _logins(lab) - before == 1, "the TOTP sshd saw more than one login"

    status = json.loads(_cli(capsys, None, "keeper", "status", "--json"))
    kept = [k for k in status["kept"] if k["port"] == lab.totp_port]
    assert [k["backend"] for k in kept] == [backend]
    log = (keeper / "keeper.log").read_text()
    assert user.codes[0] not in log, "a one-time code reached the keeper's log"
    while_kept()

    _cli(capsys, None, "keeper", "stop")
    assert "no connection keeper is running" in _cli(capsys, None, "keeper", "status")


@pytest.mark.usefixtures("totp_turn")
def test_ten_commands_one_code_on_the_windows_endpoint(testbed: tb.Testbed, lab: SSHLab, keeper: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, with the keeper on the endpoint Windows uses (a key's proof both ways; here over a Unix
    socket in place of the named pipe)."""
    monkeypatch.setenv("BRAAS_HPC_KEEPER_ENDPOINT", "pipe")
    seen: list[bool] = []
    _ten_commands(testbed, lab, keeper, "asyncssh", capsys, lambda: seen.append(
        (keeper / "keeper.key").is_file() and (keeper / "keeper.pipe.sock").exists()
        and not (keeper / "keeper.sock").exists()))
    assert seen == [True]
    assert not (keeper / "keeper.key").exists()  # the keeper took its key with it


def test_a_cut_connection_is_opened_again(testbed: tb.Testbed, keeper: Path, backend: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with running_proxy("127.0.0.1", testbed.ssh_port) as proxy:
        known = tmp_path / "known_hosts"  # the cluster's key, pinned for the proxy's address
        pinned = Path(testbed.known_hosts).read_text().split("\n")[0].split(maxsplit=1)[1]
        known.write_text(f"[127.0.0.1]:{proxy.port} {pinned}\n")
        name = f"tb-cut-{backend}"
        write_preset(testbed, name, port=proxy.port, ssh_backend=backend, known_hosts=str(known))
        _cli(capsys, None, "test", name)
        _cli(capsys, None, "test", name)
        assert proxy.connections == 1, "the second command did not ride the kept connection"
        assert proxy.drop_all() == 1
        _cli(capsys, None, "test", name)
        assert proxy.connections == 2 and proxy.drops == 1
        _cli(capsys, None, "test", name)
        assert proxy.connections == 2


def test_an_unknown_host_key_keeps_its_type(testbed: tb.Testbed, keeper: Path, backend: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    name = f"tb-unknown-{backend}"
    write_preset(testbed, name, ssh_backend=backend, known_hosts=str(tmp_path / "empty_known_hosts"))
    capsys.readouterr()
    code = cli.main(["test", name], TerminalPrompts(interactive=False))
    out, err = capsys.readouterr()
    assert code == 3, out + err  # not trusted: the cluster could not be reached
    assert "is not a known host" in err and "SHA256:" in err, err
    assert (keeper / sockets.SOCKET_NAME).exists(), "the keeper was not used"


def test_a_killed_keeper_is_replaced(testbed: tb.Testbed, keeper: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A keeper killed outright leaves its socket behind: the next command starts a new keeper on it."""
    _cli(capsys, None, "test", "testbed")
    first = json.loads(_cli(capsys, None, "keeper", "status", "--json"))["pid"]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{first}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (keeper / sockets.SOCKET_NAME).exists(), "the stale socket is the case under test"
    _cli(capsys, None, "test", "testbed")
    status = json.loads(_cli(capsys, None, "keeper", "status", "--json"))
    assert status["pid"] != first and [k["port"] for k in status["kept"]] == [testbed.ssh_port]


@pytest.mark.usefixtures("totp_turn")
def test_the_addon_and_then_the_cli_ride_one_login(testbed: tb.Testbed, lab: SSHLab, keeper: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The render add-on (in the bpy module, its UI branch) logs in to the TOTP sshd: the code typed in its
    popup reaches the keeper. A CLI command afterwards, by the same user, asks nothing and logs in nowhere."""
    name = "tb-keep-addon"
    write_preset(testbed, name, port=lab.totp_port, known_hosts=str(lab.known_hosts))
    (tmp_path / "lab.pickle").write_bytes(pickle.dumps(lab))
    user = Session(tmp_path / "user")
    before = _logins(lab)
    got = user.run(prelude=MAIN_LOOP, script=f"""
        import pickle
        import tests.testbed.testbed  # before sshlab, which the pickle names
        with open({str(tmp_path / "lab.pickle")!r}, "rb") as stream:
            lab = pickle.load(stream)
        bpy.ops.braas_hpc.presets_reload()
        for item in prefs.presets:
            item.enabled = item.name == {name!r}
        asked = []
        bpy.ops.braas_hpc.test_connections()
        for _ in range(3):
            loop.run_until(lambda: runtime.state.question is not None or not runtime.state.bridge.operations(), 60)
            if runtime.state.question is None:
                break
            asked.append(runtime.state.question.kind)
            bpy.ops.braas_hpc.answer_prompt(answer_1=lab.fresh_totp())
        result["asked"] = asked
        result["report"] = prefs.presets[{name!r}].report
    """)
    assert got["asked"] == ["kbdint"] and got["report"].startswith("ok: "), got
    monkeypatch.setenv("HOME", str(user.env["HOME"]))  # the same user: the keeper serves one HOME
    cli_user = CodeUser(lab)
    _cli(capsys, cli_user, "test", name)
    assert cli_user.codes == [] and _logins(lab) - before == 1


def test_commands_of_many_clients_share_the_connection_within_sshds_session_limit(testbed: tb.Testbed,
                                                                                   keeper: Path) -> None:
    """sshd allows a few sessions per connection (MaxSessions, 10 by default) and every command on the kept
    connection counts: beyond SESSIONS_AT_ONCE at once, commands wait their turn instead of being refused."""
    from braas_hpc.core.transport.base import NoPrompts

    many = 2 * SESSIONS_AT_ONCE + 2
    script = 'date +%s.%N; sleep 0.4; date +%s.%N'

    async def clients() -> list[tuple[float, float]]:
        target = target_for(load_preset("testbed"))
        each = [KeptTransport("asyncssh", target, NoPrompts(), 60, no_direct) for _ in range(many)]
        await each[0].connect()
        done = await asyncio.gather(*(t.run(["sh", "-c", script]) for t in each))
        return [tuple(float(x) for x in d.stdout.split()) for d in done]  # type: ignore[misc]

    spans = asyncio.run(clients())
    at_once = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert 2 <= at_once <= SESSIONS_AT_ONCE, at_once


def test_a_command_from_another_home_goes_direct_and_says_why(testbed: tb.Testbed, keeper: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper logs in with its own HOME (~/.ssh): a command with another one is not served by it, but
    connects on its own, and `BRAAS_HPC_DEBUG=1` says why."""
    first = run_cli("test", "testbed")
    assert first.returncode == 0, first.stderr
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BRAAS_HPC_DEBUG", "1")
    other = run_cli("test", "testbed")
    assert other.returncode == 0, other.stderr
    assert "connection keeper not used" in other.stderr and "another HOME" in other.stderr, other.stderr


def _submit(scene: Path, preset: str) -> tuple[dict, str]:
    done = run_cli("submit", str(scene), "--preset", preset, "--frames", "1", "--pack", "dir", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_two_submits_ride_one_login_and_stream_the_inputs_through_the_keeper(testbed: tb.Testbed, keeper: Path,
                                                                           backend: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           remote) -> None:  # noqa: ANN001
    """`braas-hpc submit` of the sample, twice, through the keeper: the first streams its new store file
    (the texture, made 8 MiB of bytes the cluster has never seen) to the cluster's submission helper on
    the kept connection's channel, the second sends nothing; the frame renders with that texture. The proxy
    in front of sshd saw one connection for all five commands, and neither submit fell back to a connection
    of its own or to step-by-step."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "examples" / "sample", project)
    texture = project / "textures" / "checker.png"
    with texture.open("ab") as stream:  # PNG readers ignore what follows the end chunk
        stream.write(secrets.token_bytes(8 << 20))
    monkeypatch.setenv("BRAAS_HPC_DEBUG", "1")
    with running_proxy("127.0.0.1", testbed.ssh_port) as proxy:
        known = tmp_path / "known_hosts"
        pinned = Path(testbed.known_hosts).read_text().split("\n")[0].split(maxsplit=1)[1]
        known.write_text(f"[127.0.0.1]:{proxy.port} {pinned}\n")
        name = f"tb-submit-{backend}"
        write_preset(testbed, name, port=proxy.port, ssh_backend=backend, known_hosts=str(known))
        first, said = _submit(project / "sample.blend", name)
        second, said_again = _submit(project / "sample.blend", name)
        assert proxy.connections == 1, "the second submit did not ride the kept connection"
        for job in (first, second):
            assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
        got = run_cli("download", first["job"], "--dest", str(tmp_path / "frames"))
        assert got.returncode == 0, got.stderr
        assert proxy.connections == 1
    check_frame(tmp_path / "frames" / "frame_000001.png")  # the checker's colours: the texture was rendered
    for stderr in (said, said_again):
        assert "connection keeper not used" not in stderr and "step by step" not in stderr, stderr
    assert first["uploaded_bytes"] >= 8 << 20 and second["uploaded_bytes"] == 0
    assert first["scheduler_ids"] and second["scheduler_ids"]
    digest = sha256(texture)
    stored = f"{testbed.workdir}/braas-hpc-{testbed.user}/store/{digest[:2]}/{digest}"
    assert remote(f"sha256sum {shlex.quote(stored)}").stdout.split()[:1] == [digest]
