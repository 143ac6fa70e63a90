"""The add-on and the CLI with the Blender the artist runs: an older Blender never rewrites a newer file,
the panel shows which Blender the cluster will use, and a Blender too old for the scene is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.blender.addon_runner import Session
from tests.helpers import REPO, make_sample

# A scene that says a newer Blender (4.9) saved it: the header of a 4.5 file, its version patched.
NEWER_FILE = """
bpy.context.scene.render.engine = "CYCLES"
bpy.ops.wm.save_as_mainfile(filepath={path!r}, compress=False, copy=True)
data = open({path!r}, "rb").read()
assert data[:12] == b"BLENDER-v405", data[:12]
open({path!r}, "wb").write(data[:9] + b"409" + data[12:])
"""


def test_a_file_a_newer_blender_saved_is_never_saved_over(tmp_path: Path) -> None:
    scene = tmp_path / "newer.blend"
    got = Session(tmp_path / "user").run(NEWER_FILE.format(path=str(scene)) + f"""
from braas_hpc.blender import checks
from braas_hpc.core.errors import UsageError
bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
bpy.data.objects.new("Changed", None)  # unsaved work
result["dirty"], result["file_version"] = bpy.data.is_dirty, list(bpy.data.version[:2])
before = open({str(scene)!r}, "rb").read()
try:
    checks.save_if_changed()
    result["error"] = ""
except UsageError as error:
    result["error"] = str(error)
settings = bpy.context.scene.braas_hpc
settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "1"
try:
    result["submit"] = sorted(bpy.ops.braas_hpc.submit())
except RuntimeError as error:  # an operator's error report, in background mode
    result["submit"] = str(error)
result["unchanged"] = open({str(scene)!r}, "rb").read() == before
""")
    assert got["dirty"] is True and got["file_version"] == [4, 9]
    assert "newer.blend was saved by Blender 4.9" in got["error"] and "this Blender 4.5" in got["error"]
    assert "newer.blend was saved by Blender 4.9" in got["submit"] and got["unchanged"] is True


def test_the_panel_shows_the_scenes_and_the_clusters_blender(tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "scene")
    got = Session(tmp_path / "user").run(f"""
from braas_hpc.blender import checks
from braas_hpc.core.cluster_blender import InstalledBlender, record_blender
bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
result["unknown"] = checks.blender_versions("karolina", "dir")
result["local"] = checks.blender_versions("local", "packed")
record_blender("karolina", InstalledBlender("blender", (), {{}}, "Blender 4.2.3 LTS"))
result["older"] = checks.blender_versions("karolina", "dir")
record_blender("karolina", InstalledBlender("blender", (), {{}}, "Blender 5.0.1"))
result["newer"] = checks.blender_versions("karolina", "dir")
""")
    assert got["unknown"] == ["Blender: scene 4.5, cluster not known yet (Preferences > Install records it)", ""]
    assert got["local"] == ["Blender: scene 4.5, rendered by this Blender 4.5.4", ""]
    text, warning = got["older"]
    assert text == "Blender: scene 4.5, cluster 4.2.3" and "older than the file it will render" in warning
    assert got["newer"] == ["Blender: scene 4.5, cluster 5.0.1", ""]


def test_the_cli_refuses_a_blender_older_than_the_scene(tmp_path: Path, user_dirs: dict[str, str]) -> None:
    scene = make_sample(tmp_path / "scene")
    old = tmp_path / "blender-4.2"
    old.write_text("#!/bin/sh\necho 'Blender 4.2.3 LTS'\n")
    old.chmod(0o755)
    env = {**os.environ, "BRAAS_HPC_BLENDER": str(old)}
    for pack in ("packed", "dir"):
        done = subprocess.run([sys.executable, "-m", "braas_hpc.cli", "render", str(scene), "--frames", "1",
                               "--pack", pack], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        assert done.returncode == 2, done.stderr
        assert "sample.blend was saved by Blender 4.5, but the Blender that" in done.stderr
        assert "is 4.2.3" in done.stderr and "BRAAS_HPC_BLENDER" in done.stderr
    assert not list(Path(user_dirs["BRAAS_HPC_DATA_DIR"]).glob("local/braas-hpc/jobs/*/out/*"))
