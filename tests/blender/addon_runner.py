"""Run a script against the add-on in real Blender (the bpy wheel) in a fresh process.

Each call is a new Blender session with private user dirs (Blender's, braas-hpc's config and data, and
HOME), so "a restart" is simply a second call with the same dirs. The script sets `result` (a dict),
which comes back as JSON.
"""

from __future__ import annotations

import json
import os
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
POSTAMBLE = """
with open({report!r}, "w") as stream:
    json.dump(result, stream)
"""


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
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # every thread's stack, to stderr, before it is killed
            time.sleep(2)
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"Blender did not end within {timeout:.0f} s (its script "
                                 f"{'had' if report.is_file() else 'had not'} finished); its threads:\n"
                                 f"{err[-6000:]}\n{out[-2000:]}") from None
        assert process.returncode == 0 and report.is_file(), f"Blender script failed:\n{out[-3000:]}\n{err[-3000:]}"
        return json.loads(report.read_text())
