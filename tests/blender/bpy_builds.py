"""Other Blender versions for tests: the bpy wheel of each, installed once into its own directory under
/var/tmp, run by the Python that Blender version bundles (3.11 for 4.2 to 5.0, 3.13 from 5.1)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import testbed as tb

CACHE = Path(os.environ.get("BRAAS_BPY_CACHE", "/var/tmp/braas-bpy"))
# bpy wheels fetched earlier (optional): pip takes them from here instead of the index.
WHEELS = Path(os.environ.get("BRAAS_BPY_WHEELS", "/var/tmp/bpy-wheels"))


@dataclass(frozen=True)
class BpyBuild:
    version: str  # of the bpy wheel, which is Blender's
    python: str  # the major.minor that Blender bundles

    def __str__(self) -> str:
        return f"blender-{self.version}"

    @property
    def series(self) -> str:
        return ".".join(self.version.split(".")[:2])

    def interpreter(self) -> str:
        """A Python of this build's version: Debian's 3.11 (as the test cluster uses), else pyenv's."""
        if self.python == "3.11":
            return tb.SYSTEM_PYTHON
        root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
        found = sorted(glob.glob(f"{root}/versions/{self.python}.*/bin/python{self.python}"))
        found += [p for p in (f"/usr/bin/python{self.python}",) if os.path.exists(p)]
        assert found, f"Blender {self.version} needs Python {self.python}: install it (e.g. `pyenv install " \
                      f"{self.python}`)"
        return found[-1]

    def site(self) -> Path:
        """The directory holding this bpy (and only its own dependencies); installed on first use."""
        if self.version == tb.BPY_VERSION:  # the test cluster's copy, shared
            layout = tb.Layout.from_env()
            tb.ensure_bpy(layout)
            return layout.bpy_site
        target = CACHE / f"bpy-{self.version}-py{self.python}"
        marker = target / ".braas-bpy-installed"
        if marker.exists():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # a half-finished earlier attempt
        python = self.interpreter()
        if self.python == f"{sys.version_info[0]}.{sys.version_info[1]}" or python == tb.SYSTEM_PYTHON:
            # Debian's python3.11 may lack pip: ours picks the wheels for that version.
            pip = [sys.executable, "-m", "pip", "install", "--python-version", self.python, "--only-binary=:all:",
                   "--ignore-requires-python"]
        else:
            pip = [python, "-m", "pip", "install"]
        if WHEELS.is_dir():
            pip += ["--find-links", str(WHEELS)]
        done = subprocess.run([*pip, "--disable-pip-version-check", "-q", "--target", str(partial),
                               f"bpy=={self.version}"], capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"pip could not install bpy=={self.version}:\n{done.stderr[-3000:]}"
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        marker.touch()
        return target

    def env(self, home: Path) -> dict[str, str]:
        """Only this bpy importable, a private HOME and Blender config, and no `blender` on PATH (the add-on
        must find this Blender, not another version)."""
        path = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                if d and not os.access(os.path.join(d, "blender"), os.X_OK)]
        return {"PATH": os.pathsep.join(path), "HOME": str(home), "PYTHONPATH": str(self.site()),
                "BLENDER_USER_RESOURCES": str(home / "blender-user")}

    def validator(self) -> Path:
        """Blender's own extension manifest checker, as shipped with this version."""
        (found,) = self.site().glob("bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py")
        return found


# Two LTS releases, the first 5.x and the newest (the first on Python 3.13).
MATRIX = (BpyBuild("4.2.23", "3.11"), BpyBuild(tb.BPY_VERSION, "3.11"), BpyBuild("5.0.1", "3.11"),
          BpyBuild("5.3.0", "3.13"))
