"""The add-on's UI branch, driven for real in the bpy module against the test cluster.

In background mode `runtime.launch` waits for each operation and popups return at once, so the branch a
user runs (operators return at once, the `pump` timer hands results back, questions open popups) would
go untested. Here `runtime.force_ui` selects that branch, `bpy.app.timers` (which never fire in the bpy
module) are taken over by a main loop of the test's own that ticks every few milliseconds on the main
thread, as Blender's event loop does, and the popups' operators are run the way their OK button runs
them (`execute`; `invoke` would need a window).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from braas_hpc.core.presets import load_preset
from tests.blender.addon_runner import Session

# Blender's main loop, as far as the add-on can tell: timers registered with bpy.app.timers are called on
# the main thread when due, between ticks of TICK_S. Each tick records how late it started: the previous
# tick's timer work plus how late the sleep woke up, i.e. how long the main thread could not draw.
MAIN_LOOP = '''
import time
from braas_hpc.blender import runtime

class MainLoop:
    TICK_S = 0.005

    def __init__(self):
        self.due = {}
        self.late_ms = []
        self.stages = []
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
        for function, when in list(self.due.items()):
            if when <= time.perf_counter() and function in self.due:
                delay = function()
                if delay is None:
                    self.due.pop(function, None)
                else:
                    self.due[function] = time.perf_counter() + delay

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
            active = runtime.state.bridge.active()
            self.stages.append(active[0].snapshot().stage if active else "")
        return True

loop = MainLoop()
runtime.force_ui = True
'''


def _preset(name: str, **changes: str) -> Path:
    """A copy of the `testbed` preset under `name`, with some of its lines changed (key = "value")."""
    source = Path(load_preset("testbed").source)
    text = source.read_text()
    for key, value in {"name": name, **changes}.items():
        text, count = re.subn(rf'^{key} = ".*"$', f'{key} = "{value}"', text, flags=re.MULTILINE)
        assert count == 1, key
    path = source.parent / f"{name}.toml"
    path.write_text(text)
    return path


def test_first_connection_asks_trust_then_passphrase_through_the_popups(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    """A new cluster with an encrypted key: Test Connections meets the real unknown host key, the trust
    popup's OK records it and connects again, the passphrase popup's answer reaches the connection."""
    known = tmp_path / "known_hosts"
    encrypted = Path(testbed.key_file).parent / "id_ed25519_enc"
    preset = _preset("tb-new", known_hosts=str(known), key_file=str(encrypted))
    pub = Path(testbed.base_dir) / "sshd" / "ssh_host_ed25519_key.pub"
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    try:
        got = Session(tmp_path / "user").run(prelude=MAIN_LOOP, script=f"""
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
                    events.append([question.kind, question.title])
                    answer = {testbed.ssh_lab.key_passphrase!r}
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
    assert len(asked) == len(got["events"]) == 2, got["events"]
    host, passphrase = asked["host key"], asked["passphrase"]
    assert host == ["host key", "127.0.0.1", testbed.ssh_port, "ssh-ed25519", fingerprint]
    assert got["known_before_yes"] is False  # nothing recorded before the user's yes
    assert got["trust"] == ["FINISHED"] and got["answer"] == ["FINISHED"]
    assert passphrase == ["passphrase", f"Passphrase for {encrypted}"]
    assert got["report"].startswith("ok: ") and "writable" in got["report"], got
    line = " ".join(pub.read_text().split()[:2])
    assert known.read_text() == f"[127.0.0.1]:{testbed.ssh_port} {line}\n"
