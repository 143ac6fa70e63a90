"""No secret is ever written: the real CLI and the real add-on log in with an encrypted key (passphrase)
to the TOTP sshd (one-time code), submit, follow and download a job. Searched for the passphrase and the
codes (as typed, as UTF-16, as hex and as base64 at each alignment): every byte this process and its
children (ssh, Blender) write to any file while that runs, seen by strace at the system call, so a file
written and removed again is caught too; then every file left here, and every file on the cluster that
changed meanwhile. With BRAAS_HPC_KEYRING=1 the passphrase may go to the OS keyring (here an in-memory
one, as no OS keyring runs on the test machine), never to a file of ours.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

from braas_hpc import cli
from braas_hpc.core.jobs import FRAME_FILE
from braas_hpc.prompts import KEYRING_SERVICE, TerminalPrompts
from tests.blender.addon_runner import Session
from tests.client_side import cluster_path
from tests.helpers import MemoryKeyring, check_frame, make_sample
from tests.testbed import testbed as tb
from tests.testbed.sshlab import SSHLab

pytestmark = pytest.mark.testbed

OPENSSH_DIR = Path(f"/tmp/braas-ssh-{os.getuid()}")  # the OpenSSH back end's control sockets and askpass

ADDON_SCRIPT = """
import asyncio, time
from braas_hpc.blender.addon import runtime
from braas_hpc.addon_kit.prompting import PromptBroker
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import pool, transport_for
answers = {"passphrase": os.environ.pop("BRAAS_TEST_PASSPHRASE"), "kbdint": os.environ.pop("BRAAS_TEST_CODE")}
# Someone at the keyboard: this broker asks (in background mode the add-on's never does); the pump takes
# each question on the main thread and the answer goes through the popup's operator.
runtime.state.broker = pool.prompts = PromptBroker(lambda: True)
bpy.ops.braas_hpc.preset_add_custom(name=NAME, scheduler="slurm", host="127.0.0.1", user=USER, workdir=WORKDIR)
item = prefs.presets[NAME]
item.port, item.key_file, item.known_hosts = PORT, KEY, KNOWN
item.account, item.partition_cpu, item.partition_gpu, item.blender = "braas", "qcpu", "qgpu", "blender"
result["preset_error"] = item.error

async def connect():
    await transport_for(load_preset(NAME)).connect()

asked = []
operation = runtime.state.bridge.run("Connecting", connect)
deadline = time.time() + 60
while not operation.finished and time.time() < deadline:
    runtime.pump()
    question = runtime.state.question
    if question is not None:
        asked.append(question.kind)
        bpy.ops.braas_hpc.answer_prompt(answer_1=answers.pop(question.kind, ""))
    time.sleep(0.02)
operation.result(1)
result["asked"] = asked
# The connection lives on the add-on's loop for the session: the operators need no answer now.
bpy.ops.wm.open_mainfile(filepath=SCENE)
settings = bpy.context.scene.braas_hpc
settings.preset, settings.frames_mode, settings.custom_frames = NAME, "CUSTOM", "1"
result["submit"] = sorted(bpy.ops.braas_hpc.submit())
jobs = bpy.context.window_manager.braas_hpc.jobs
name = result["job"] = jobs[0].name
deadline = time.time() + 300
while jobs[name].state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") and time.time() < deadline:
    time.sleep(1)
    bpy.ops.braas_hpc.refresh_jobs()
result["state"] = jobs[name].state
result["download"] = sorted(bpy.ops.braas_hpc.download_job(job=name))
bpy.ops.wm.save_userpref()
"""


def variants(secret: str) -> dict[str, bytes]:
    """The forms a secret could take in a file."""
    raw = secret.encode()
    found = {"utf-8": raw, "utf-16-le": secret.encode("utf-16-le"), "utf-16-be": secret.encode("utf-16-be"),
             "hex": raw.hex().encode()}
    for shift in range(3):  # base64 of the secret inside longer data: only the characters it alone decides
        start, end = (shift * 8 + 5) // 6, (shift + len(raw)) * 8 // 6
        for kind, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            found[f"{kind}+{shift}"] = encode(b"\0" * shift + raw)[start:end]
    return found


def _patterns(needles: dict[str, str]) -> list[tuple[str, re.Pattern[bytes]]]:
    """A one-time code is 6 digits: as typed it counts only where no digit touches it."""
    patterns = []
    for label, secret in needles.items():
        for form, data in variants(secret).items():
            digits = form == "utf-8" and secret.isdigit()
            patterns.append((f"{label} ({form})", re.compile(rb"(?<![0-9])" + re.escape(data) + rb"(?![0-9])"
                                                              if digits else re.escape(data))))
    return patterns


def scan(roots: list[Path], needles: dict[str, str], since: float = 0.0) -> tuple[list[str], list[Path]]:
    """Every regular file under the roots (changed after `since`), searched for every variant of every
    needle."""
    patterns = _patterns(needles)
    leaks, files = [], []
    for root in roots:
        # os.walk, not rglob: a directory that vanishes while it is walked is passed over, not an error
        walked = sorted(Path(d, f) for d, _dirs, names in os.walk(root) for f in names)
        for path in [root] if root.is_file() else walked:
            try:  # a file another test (the other lane) removes meanwhile is not this test's to read
                if path.is_symlink() or not path.is_file() or path.stat().st_mtime < since:
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            files.append(path)
            leaks += [f"{path}: {what}" for what, pattern in patterns if pattern.search(data)]
    return leaks, files


# strace -xx writes every string as \xNN escapes, the file name in <...> too (-y).
_WRITE = re.compile(r"^\d+\s+(?:write|pwrite64|writev|pwritev2?)\((\d+)<((?:\\x[0-9a-f]{2})*)>, (.*)$")
_STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def _unhex(escaped: str) -> bytes:
    return bytes.fromhex(escaped.replace("\\x", ""))


@contextmanager
def traced_writes(log: Path) -> Iterator[dict[str, bytearray]]:
    """Every write(2)-family call of this process (all threads) and of every child it starts meanwhile,
    as seen by strace: on leaving, the dict holds the bytes written to each regular file, by path.
    Pipes, sockets and terminals are left out: a secret may travel there (to ssh's askpass, the agent)."""
    written: dict[str, bytearray] = defaultdict(bytearray)
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=write,pwrite64,writev,pwritev,pwritev2",
                               "-e", "signal=none", "-y", "-xx", "-s", "16777216", "-o", str(log),
                               "-p", str(os.getpid())], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and _traced_by(tracer.pid)):  # attached: our own writes are seen from here on
            assert tracer.poll() is None and time.monotonic() < deadline, tracer.stderr.read() if tracer.stderr else ""
            time.sleep(0.05)
        yield written
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches from every traced process; they carry on
        tracer.wait(60)
    for line in log.read_text().splitlines():
        call = _WRITE.match(line)
        if call is None:
            continue
        path = _unhex(call[2]).decode(errors="replace")
        if path.startswith("/") and not path.startswith("/dev/"):
            for data in _STRING.findall(call[3]):
                written[path] += _unhex(data)


def _traced_by(tracer: int) -> bool:
    status = Path("/proc/self/status").read_text()
    return f"TracerPid:\t{tracer}\n" in status


def scan_writes(written: dict[str, bytearray], needles: dict[str, str]) -> list[str]:
    patterns = _patterns(needles)
    return [f"{path} (written): {what}" for path, data in written.items()
            for what, pattern in patterns if pattern.search(data)]


@pytest.fixture
def lab(testbed: tb.Testbed) -> SSHLab:
    return testbed.ssh_lab


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME, config, data and temp directory: everything written here is scanned."""
    for name in ("home", "config", "data", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("BRAAS_HPC_KEYRING", "1")  # with no OS keyring running (the test machine's case)
    return tmp_path


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    before = keyring.get_keyring()
    store = MemoryKeyring()
    keyring.set_keyring(store)
    try:
        yield store
    finally:
        keyring.set_keyring(before)


class User:
    """Answers the CLI's questions as a person would, and remembers what was typed."""

    def __init__(self, lab: SSHLab) -> None:
        self.lab = lab
        self.codes: list[str] = []
        self.asked: list[str] = []

    def secret(self, prompt: str) -> str:
        self.asked.append(prompt)
        if "passphrase" in prompt.lower():
            return self.lab.key_passphrase
        self.codes.append(self.lab.fresh_totp())
        return self.codes[-1]

    def yes(self, prompt: str) -> str:
        self.asked.append(prompt)
        return "yes"

    def prompts(self) -> TerminalPrompts:
        return TerminalPrompts(ask_secret=self.secret, ask=self.yes, interactive=True)


def _preset(testbed: tb.Testbed, name: str, port: int, key: Path, known: Path) -> None:
    text = testbed.preset_file.read_text()
    for old, new in ((f'name = "{testbed.preset_file.stem}"', f'name = "{name}"'),
                     (f"port = {testbed.ssh_port}", f"port = {port}"),
                     (f'key_file = "{testbed.key_file}"', f'key_file = "{key}"'),
                     (f'known_hosts = "{testbed.known_hosts}"', f'known_hosts = "{known}"')):
        assert old in text, old
        text = text.replace(old, new)
    (Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets").mkdir(exist_ok=True)
    (Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets" / f"{name}.toml").write_text(text)


def _cli(capsys: pytest.CaptureFixture[str], user: User, console: list[str], *argv: str) -> str:
    capsys.readouterr()
    code = cli.main(list(argv), user.prompts())
    out, err = capsys.readouterr()
    console.append(out + err)
    assert code == 0, out + err
    return out


def _job_dir(testbed: tb.Testbed, job: str) -> Path:
    return cluster_path(testbed.workdir) / f"braas-hpc-{testbed.user}" / "jobs" / job


@pytest.mark.usefixtures("totp_turn")
def test_no_passphrase_or_code_in_any_file(testbed: tb.Testbed, lab: SSHLab, home: Path,
                                           memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    started = time.time() - 1
    trace = ExitStack()  # closed before the scan: the log itself (escaped bytes) lives outside what is scanned
    written = trace.enter_context(traced_writes(tmp_path_factory.mktemp("strace") / "writes.log"))
    known = home / "home" / ".ssh" / "known_hosts"  # starts empty: the CLI records the host on "yes"
    known.parent.mkdir()
    _preset(testbed, "tb-secrets", lab.totp_port, lab.key_ed25519_enc, known)
    _preset(testbed, "tb-secrets-plain", testbed.ssh_port, lab.key_ed25519_enc, testbed.known_hosts)
    scene = make_sample(home / "project")
    user, console = User(lab), []

    # The CLI with no usable OS keyring: asked on the terminal, kept in memory only.
    keyring.set_keyring(fail.Keyring())
    submitted = json.loads(_cli(capsys, user, console, "submit", str(scene), "--preset", "tb-secrets",
                                "--frames", "1-2", "--json"))
    job = submitted["job"]
    frames = home / "frames"
    _cli(capsys, user, console, "download", job, "--dest", str(frames), "--follow")
    assert sorted(p.name for p in frames.iterdir()) == ["frame_000001.png", "frame_000002.png"]
    for frame in frames.iterdir():
        check_frame(frame)
    _cli(capsys, user, console, "test", "tb-secrets", "--ssh-backend", "openssh")
    assert "[127.0.0.1]:2223 ssh-ed25519 " in known.read_text()
    assert any("Trust" in q for q in user.asked) and len(user.codes) == 3
    assert sum("passphrase" in q.lower() for q in user.asked) >= 3

    # With the OS keyring (in memory here): the passphrase goes there, asked once; a code never does.
    keyring.set_keyring(memory_keyring)
    asked = len(user.asked)
    _cli(capsys, user, console, "test", "tb-secrets-plain", "--ssh-backend", "paramiko")
    _cli(capsys, user, console, "test", "tb-secrets-plain", "--ssh-backend", "paramiko")
    assert len(user.asked) == asked + 1
    assert memory_keyring.items == {(KEYRING_SERVICE, f"passphrase:{lab.key_ed25519_enc}"): lab.key_passphrase}

    # The add-on, in real Blender, answering through its popup operator.
    blender = Session(home / "blender")
    addon_scene = home / "addon-project" / "sample.blend"
    shutil.copytree(scene.parent, addon_scene.parent)
    for key, value in (("BRAAS_HPC_CONFIG_DIR", blender.root / "config"), ("BRAAS_HPC_DATA_DIR", blender.root / "data"),
                       ("TMPDIR", blender.root / "tmp")):
        Path(value).mkdir(parents=True)
        monkeypatch.setenv(key, str(value))
    addon_code = lab.fresh_totp()
    monkeypatch.setenv("BRAAS_TEST_PASSPHRASE", lab.key_passphrase)
    monkeypatch.setenv("BRAAS_TEST_CODE", addon_code)
    names = {"NAME": "tb-addon", "USER": testbed.user, "WORKDIR": testbed.workdir, "PORT": lab.totp_port,
             "KEY": str(lab.key_ed25519_enc), "KNOWN": str(known), "SCENE": str(addon_scene)}
    got = blender.run(prelude="".join(f"{k} = {v!r}\n" for k, v in names.items()), script=ADDON_SCRIPT)
    monkeypatch.delenv("BRAAS_TEST_PASSPHRASE")
    monkeypatch.delenv("BRAAS_TEST_CODE")
    assert got["preset_error"] == "" and got["asked"] == ["passphrase", "kbdint"], got
    assert got["submit"] == ["FINISHED"] and got["state"] == "COMPLETED" and got["download"] == ["FINISHED"], got
    addon_frame = blender.root / "home" / "braas-hpc" / got["job"] / "frame_000001.png"
    check_frame(addon_frame)

    # Everything written, here and on the cluster; and what the CLI printed, as if kept in a log.
    (home / "console.txt").write_text("\n".join(console))
    trace.close()
    needles = {"passphrase": lab.key_passphrase, **{f"code {i}": c for i, c in enumerate([*user.codes, addon_code])}}
    write_leaks = scan_writes(written, needles)
    assert write_leaks == [], "secrets were written:\n" + "\n".join(write_leaks)
    assert str(home / "console.txt") in written and any(path.endswith("jobs.sqlite") for path in written), (
        f"the trace missed writes it must have seen: {sorted(written)}")
    leaks, files = scan([home, _job_dir(testbed, job), _job_dir(testbed, got["job"])], needles)
    # Shared by every test, so only what changed during this one: the cluster user's whole home (every job,
    # the store, the scripts, the PBS stand-in's records), and the OpenSSH back end's sockets and askpass.
    cluster_home = cluster_path(testbed.workdir).parent
    more_leaks, more_files = scan([cluster_home, OPENSSH_DIR], needles, since=started)
    assert leaks + more_leaks == [], "secrets were written:\n" + "\n".join(leaks + more_leaks)

    # What was scanned includes every kind of file the brief names (so a moved file cannot pass unseen).
    names_seen = {p.name for p in files + more_files}
    for expected in ("jobs.sqlite", "hash-cache.sqlite", "userpref.blend", "tb-secrets.toml", "tb-addon.toml",
                     "known_hosts", "job.json", "job.sh", "frames.txt", "task-1.log"):
        assert expected in names_seen, f"{expected} was not among the scanned files"
    assert any(p.parent.name == "downloads" for p in files), "no download ledger was scanned"
    assert sum(1 for p in files if FRAME_FILE.match(p.name)) >= 5
    print(f"\nFIGURES secrets: files_scanned={len(files) + len(more_files)} files_written={len(written)} "
          f"bytes_written={sum(map(len, written.values()))} secrets={len(needles)} "
          f"variants_each={len(variants(lab.key_passphrase))} leaks=0 codes_typed={len(needles) - 1}")
