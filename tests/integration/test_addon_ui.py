"""The add-on's UI branch, driven for real in the bpy module against the test cluster.

In background mode `runtime.launch` waits for each operation and popups return at once, so the branch a
user runs (operators return at once, the `pump` timer hands results back, questions open popups) would
go untested. Here `runtime.force_ui` selects that branch, `bpy.app.timers` (which never fire in the bpy
module) are taken over by a main loop of the test's own that ticks every few milliseconds on the main
thread, as Blender's event loop does, and the popups' operators are run the way their OK button runs
them (`execute`; `invoke` would need a window).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from braas_hpc.core.presets import load_preset
from tests.blender.addon_runner import Session
from tests.conftest import run_cli

# Blender's main loop, as far as the add-on can tell: timers registered with bpy.app.timers are called on
# the main thread when due, between ticks of TICK_S. Each tick records how late it started: the previous
# tick's timer work plus how late the sleep woke up, i.e. how long the main thread could not draw.
MAIN_LOOP = '''
import time
from braas_hpc.blender.addon import runtime

class MainLoop:
    TICK_S = 0.005

    def __init__(self):
        self.due = {}
        self.late_ms = []
        self.stages = []
        self.ran = []  # the timers each tick called: the next tick's lateness is theirs
        timers = bpy.app.timers
        timers.register, timers.unregister, timers.is_registered = self.register, self.unregister, self.is_registered

    def register(self, function, first_interval=0.0, persistent=False):
        self.due[function] = time.perf_counter() + first_interval

    def unregister(self, function):
        if self.due.pop(function, None) is None:
            raise ValueError("timer not registered")

    def is_registered(self, function):
        return function in self.due

    def tick(self):
        ran = []
        for function, when in list(self.due.items()):
            if when <= time.perf_counter() and function in self.due:
                ran.append(function.__name__)
                delay = function()
                if delay is None:
                    self.due.pop(function, None)
                else:
                    self.due[function] = time.perf_counter() + delay
        self.ran.append(" ".join(ran))

    def run_until(self, done, limit):
        deadline = time.perf_counter() + limit
        started = time.perf_counter()
        while not done():
            if time.perf_counter() > deadline:
                return False
            time.sleep(self.TICK_S)
            woke = time.perf_counter()
            self.late_ms.append((woke - started - self.TICK_S) * 1000)
            started = woke
            self.tick()
            active = runtime.busy()  # what the status line shows (the jobs follower aside)
            self.stages.append(active[0].snapshot().stage if active else "")
        return True

loop = MainLoop()
runtime.force_ui = True
'''


def _preset(name: str, **changes: str | int) -> Path:
    """A copy of the `testbed` preset under `name`, with some of its lines changed (key = value)."""
    source = Path(load_preset("testbed").source)
    text = source.read_text()
    for key, value in {"name": name, **changes}.items():
        shown = str(value) if isinstance(value, int) else f'"{value}"'
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {shown}", text, flags=re.MULTILINE)
        assert count == 1, key
    path = source.parent / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.usefixtures("totp_turn")
def test_first_connection_asks_trust_passphrase_and_code_through_the_popups(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    """A new cluster with an encrypted key and a one-time code (the lab's TOTP sshd): Test Connections
    meets the real unknown host key, the trust popup's OK records it and connects again, the answers
    typed in the login popup (passphrase, then code) reach the connection."""
    known = tmp_path / "known_hosts"
    encrypted = Path(testbed.key_file).parent / "id_ed25519_enc"
    lab = testbed.ssh_lab
    preset = _preset("tb-new", port=lab.totp_port, known_hosts=str(known), key_file=str(encrypted))
    pub = Path(testbed.base_dir) / "lab" / "sshd-totp" / "ssh_host_ed25519_key.pub"
    (tmp_path / "lab.pickle").write_bytes(pickle.dumps(lab))  # the code is computed when it is asked
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    try:
        got = Session(tmp_path / "user").run(prelude=MAIN_LOOP, script=f"""
            import pickle
            import tests.testbed.testbed  # before sshlab, which the pickle names (they import each other)
            with open({str(tmp_path / "lab.pickle")!r}, "rb") as stream:
                lab = pickle.load(stream)
            bpy.ops.braas_hpc.presets_reload()
            for item in prefs.presets:
                item.enabled = item.name == "tb-new"
            events = []

            def settled():
                state = runtime.state
                return state.host_key is not None or state.question is not None or not state.bridge.operations()

            result["launch"] = sorted(bpy.ops.braas_hpc.test_connections())
            result["returned_at_once"] = bool(runtime.state.bridge.active())
            for _ in range(6):
                if not loop.run_until(settled, 60):
                    events.append("timeout: " + runtime.state.message.text)
                    break
                if runtime.state.host_key is not None:
                    error, _retry = runtime.state.host_key
                    events.append(["host key", error.host, error.port, error.key_type, error.fingerprint])
                    result["known_before_yes"] = os.path.exists({str(known)!r}) and open({str(known)!r}).read()
                    result["trust"] = sorted(bpy.ops.braas_hpc.trust_host())  # what the popup's OK runs
                elif runtime.state.question is not None:
                    question = runtime.state.question
                    events.append([question.kind, question.title, question.fields])
                    answer = lab.key_passphrase if question.kind == "passphrase" else lab.fresh_totp()
                    result["answer"] = sorted(bpy.ops.braas_hpc.answer_prompt(answer_1=answer))
                else:
                    break
            result["events"] = events
            result["report"] = prefs.presets["tb-new"].report
            result["message"] = runtime.state.message.text
        """)
    finally:
        preset.unlink()
    assert got["launch"] == ["FINISHED"] and got["returned_at_once"]  # the UI branch: nothing waited
    # asyncssh decrypts the key before it connects, so the passphrase comes first; each is asked once.
    asked = {event[0]: event for event in got["events"]}
    assert list(asked) == ["passphrase", "host key", "kbdint"] and len(got["events"]) == 3, got["events"]
    host, passphrase, code = asked["host key"], asked["passphrase"], asked["kbdint"]
    assert host == ["host key", "127.0.0.1", lab.totp_port, "ssh-ed25519", fingerprint]
    assert len(code[2]) == 1 and code[2][0][1] is False  # one field, a code not shown as typed
    assert got["known_before_yes"] is False  # nothing recorded before the user's yes
    assert got["trust"] == ["FINISHED"] and got["answer"] == ["FINISHED"]
    assert passphrase == ["passphrase", f"Passphrase for {encrypted}", [["Passphrase", False]]]
    assert got["report"].startswith("ok: ") and "writable" in got["report"], got
    line = " ".join(pub.read_text().split()[:2])
    assert known.read_text() == f"[127.0.0.1]:{lab.totp_port} {line}\n"


BIG_MB = 300


def _noise_bmp(path: Path, megabytes: int) -> str:
    """An uncompressed 24-bit BMP of random pixels (`megabytes` MiB of them): a valid image Blender reads,
    new content each run so the cluster's store never has it already. Returns its SHA-256."""
    side = 1024 * int((megabytes / 3) ** 0.5)  # 3 bytes a pixel; rows of a multiple of 4 bytes, no padding
    pixels = side * side * 3
    header = (b"BM" + (54 + pixels).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little")
              + (40).to_bytes(4, "little") + side.to_bytes(4, "little") + side.to_bytes(4, "little")
              + (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + bytes(24))
    digest = hashlib.sha256(header)
    with path.open("wb") as stream:
        stream.write(header)
        for _ in range(pixels // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            stream.write(block)
        rest = os.urandom(pixels % (1 << 20))
        digest.update(rest)
        stream.write(rest)
    return digest.hexdigest()


def test_main_thread_never_stalls_during_a_300_mb_upload(testbed, sample_scene: Path, remote,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    """Submit (the panel's button) of a scene with a 300 MB texture, its folder sent as is: every tick of
    the main loop from the press until the result is delivered is timed."""
    folder = tmp_path / "scene"
    shutil.copytree(sample_scene.parent, folder)
    big = folder / "big_noise.bmp"
    digest = _noise_bmp(big, BIG_MB)
    got: dict = {}
    try:
        got = _submit_under_main_loop(tmp_path / "user", folder / sample_scene.name, big)
        _check_ticks(got)
    finally:
        if got.get("job"):
            run_cli("cancel", got["job"])
        root = f"{testbed.workdir}/braas-hpc-{testbed.user}"
        remote(f"rm -rf {root}/store/{digest[:2]}/{digest} {root}/jobs/{got.get('job') or 'none'}")


def _submit_under_main_loop(user: Path, scene: Path, big: Path) -> dict:
    return Session(user).run(prelude=MAIN_LOOP, script=f"""
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        image = bpy.data.images.load({str(big)!r}, check_existing=False)
        image.filepath = "//{big.name}"  # relative, as Blender's file browser sets it
        image.use_fake_user = True  # in the file and its dependencies, though no material renders it
        bpy.ops.wm.save_mainfile()
        settings = bpy.context.scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames, settings.pack = "testbed", "CUSTOM", "1", "dir"
        pressed = []

        def press():  # the button, clicked on the main thread between two ticks
            pressed.append(sorted(bpy.ops.braas_hpc.submit()))
            pressed.extend(op for op in runtime.state.bridge.operations() if op.kind == "submit")

        loop.register(press)
        uploaded = [0, 0]

        def delivered():
            for op in runtime.state.bridge.active():
                snap = op.snapshot()
                if snap.stage == "uploading":
                    uploaded[:] = [max(uploaded[0], snap.done), snap.total]
            return len(pressed) == 2 and pressed[1] not in runtime.state.bridge.operations()

        result["ended"] = loop.run_until(delivered, 300)
        result["press"] = pressed[0]
        result["error"] = str(pressed[1].error()) if pressed[1].error() else ""
        result["uploaded"] = uploaded
        result["late_ms"] = loop.late_ms
        result["stages"] = loop.stages
        result["ran"] = loop.ran
        jobs = bpy.context.window_manager.braas_hpc.jobs
        result["job"] = jobs[0].name if jobs else ""
        result["message"] = runtime.state.message.text
    """)


def _check_ticks(got: dict) -> None:
    assert got["ended"] and got["press"] == ["FINISHED"] and got["error"] == "", got["message"]
    late = got["late_ms"]
    uploading = [ms for ms, stage in zip(late, got["stages"], strict=True) if stage == "uploading"]
    before = ["after " + (ran or "no timer") for ran in ["", *got["ran"][:-1]]]  # tick i waited on i-1
    worst = sorted(zip(late, got["stages"], before, strict=True), reverse=True)[:5]
    seen = (f"{len(late)} ticks, {len(uploading)} while uploading ({sum(ms > 20 for ms in uploading)} > 20 ms, "
            f"max {max(uploading, default=0):.1f} ms); median {statistics.median(late):.2f} ms; worst: "
            + ", ".join(f"{ms:.1f} ms ({stage}, {ran})" for ms, stage, ran in worst))
    print(seen)
    # Measured on the 2-core machine, other test suites running beside (4 runs), then with two busy-looping
    # processes added (5 runs, load average up to 4): while uploading, 500-770 ticks, the slowest 3.6-8.3
    # ms, under load 19-29 ms with at most 3 ticks (0.4%) over 20 ms. Before the upload, one tick waits
    # for a full garbage collection of the Blender process's heap (the dependency tracer's allocations
    # in its worker thread trigger it; it holds the GIL): 50-109 ms, under load 88-188 ms. So: any tick
    # over 1 s means work on the main thread (a 300 MB upload there takes seconds); during the upload, a
    # tick over 200 ms, or more than 2% of ticks over 20 ms, means a stall that recurs (a pump that waits
    # 50 ms makes 5.5% of the ticks late), not scheduler noise.
    assert max(late) < 1000, seen
    assert len(uploading) >= 100, seen  # the upload really ran under this loop's eyes
    assert max(uploading) < 200, seen
    assert sum(ms > 20 for ms in uploading) < len(uploading) * 0.02, seen
    assert got["uploaded"][1] >= BIG_MB * 2**20 and got["uploaded"][0] == got["uploaded"][1]
