"""Run a script against the add-on in real Blender (the bpy wheel) in a fresh process.

Each call is a new Blender session with private user dirs (Blender's, braas-hpc's config and data, and
HOME), so "a restart" is simply a second call with the same dirs. The script sets `result` (a dict),
which comes back as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

PREAMBLE = """
import json, os, sys, faulthandler, signal
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the runner asks for every thread's stack on a hang
sys.path.insert(0, {repo!r})
import bpy, addon_utils
bpy.ops.wm.read_userpref()  # the bpy module does not read the user's preferences by itself
bpy.context.preferences.system.use_online_access = {online!r}
# Listed as enabled by the saved preferences is not loaded yet in the bpy module: load it like startup does.
addon_utils.enable("braas_hpc", default_set=True)
assert "braas_hpc" in bpy.context.preferences.addons, "the add-on did not enable"
prefs = bpy.context.preferences.addons["braas_hpc"].preferences
result = {{}}
"""
# Blender's quit disables every add-on (our unregister runs: threads stop, connections close), then ends.
# The bpy module instead ends in Python's own shutdown, where bpy 4.5 can hang for good: its audio
# device's static state is destroyed while its delayed-close thread still waits on it (fixed in Blender
# 5.0); seen in about one run in fifteen. So the script leaves the way Blender does: at once.
POSTAMBLE = """
addon_utils.disable_all()
with open({report!r}, "w") as stream:
    json.dump(result, stream)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""

# Quitting Blender takes a few seconds; a minute after the script's end it is stuck.
EXIT_GRACE_S = 60.0


@dataclass(frozen=True)
class Session:
    """The private dirs one simulated user keeps across Blender restarts."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        env = os.environ.copy()
        env.update({"HOME": str(self.root / "home"), "BLENDER_USER_RESOURCES": str(self.root / "blender")})
        env.setdefault("BRAAS_HPC_CONFIG_DIR", str(self.root / "config"))
        env.setdefault("BRAAS_HPC_DATA_DIR", str(self.root / "data"))
        return env

    def run(self, script: str, *, online: bool = True, timeout: float = 600, prelude: str = "") -> dict:
        """`script` (indented as in the test, dedented here) after `prelude` (unindented helpers)."""
        self.root.mkdir(parents=True, exist_ok=True)
        report = self.root / "report.json"
        report.unlink(missing_ok=True)
        code = (PREAMBLE.format(repo=str(REPO), online=online) + prelude + textwrap.dedent(script)
                + POSTAMBLE.format(report=str(report)))
        path = self.root / "script.py"
        path.write_text(code)
        process = subprocess.Popen([sys.executable, str(path)], env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=self.root)
        out, err, hung, stacks = _communicate(process, report, timeout)
        if hung:
            err = _without_repeats(err)
            raise AssertionError(f"Blender did not end within {hung}; its threads:\n{err[-6000:]}\n{out[-2000:]}"
                                 f"{stacks}")
        assert process.returncode == 0 and report.is_file(), f"Blender script failed:\n{out[-3000:]}\n{err[-3000:]}"
        return json.loads(report.read_text())


def _communicate(process: subprocess.Popen, report: Path, timeout: float) -> tuple[str, str, str, str]:
    """The process's output, why it was killed ("" when it ended by itself) and then its native stacks.
    Once the script has written its report Blender only has to quit: EXIT_GRACE_S, not the rest of
    `timeout`, and the stacks then come from gdb (Python's own stack dump is gone that late in the exit)."""
    deadline = time.monotonic() + timeout
    finished_at: float | None = None
    while True:
        try:
            out, err = process.communicate(timeout=1)
            return out, err, "", ""
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if finished_at is None and report.is_file():
            finished_at = now
        if finished_at is not None and now - finished_at > EXIT_GRACE_S:
            stacks = _native_stacks(process.pid)
            process.kill()
            out, err = process.communicate()
            return out, err, f"{EXIT_GRACE_S:.0f} s of its script finishing (it hung quitting)", stacks
        if now > deadline:
            process.send_signal(signal.SIGUSR1)  # every Python thread's stack, to stderr, before it is killed
            time.sleep(2)
            stacks = _native_stacks(process.pid)
            process.kill()
            out, err = process.communicate()
            return out, err, f"{timeout:.0f} s (its script had not finished)", stacks


def _without_repeats(text: str) -> str:
    """`text` with each run of one repeated line (Blender's late frees print one per block) cut to one."""
    kept: list[str] = []
    repeats = 0
    for line in text.splitlines():
        if kept and line == kept[-1]:
            repeats += 1
            continue
        if repeats:
            kept.append(f"(the line above {repeats} more times)")
            repeats = 0
        kept.append(line)
    if repeats:
        kept.append(f"(the line above {repeats} more times)")
    return "\n".join(kept)


def _native_stacks(pid: int) -> str:
    """Every thread's state and kernel stack (from /proc) and C stack (gdb, where it is installed)."""
    parts = ["\n--- threads (/proc) ---"]
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        fields = []
        for name in ("comm", "wchan", "stat", "stack"):
            try:
                fields.append((task / name).read_text().strip())
            except OSError as error:
                fields.append(f"({name}: {error.strerror})")
        parts.append(f"{task.name}: " + "\n  ".join(fields))
    gdb = shutil.which("gdb")
    if gdb is None:
        return "\n".join([*parts, "(no gdb here for the C stacks)"])
    try:
        done = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx", "-ex", "info threads", "-ex",
                               "thread apply all bt 30"], capture_output=True, text=True, timeout=120)
        parts.append("--- C stacks (gdb) ---\n" + done.stdout[-20000:] + done.stderr[-2000:])
    except subprocess.TimeoutExpired:
        parts.append("(gdb did not answer in 120 s)")
    return "\n".join(parts)
