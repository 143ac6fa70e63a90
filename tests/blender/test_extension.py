"""The built extension installs and enables in real Blender (the bpy wheel), offline from its own
wheels, and leaves nothing registered once disabled."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import run_cli
from tests.testbed import testbed as tb

PROBE = r"""
import importlib, json, sys
import bpy
zip_path, report = sys.argv[-2:]
name = "bl_ext.user_default.braas_hpc"
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
result = {"enabled": name in bpy.context.preferences.addons.keys()}
frames = importlib.import_module(name + ".core.frames")
import asyncssh, paramiko, scp, blender_asset_tracer  # only the bundled wheels can provide these
result["asyncssh"] = asyncssh.__file__
site = asyncssh.__file__.split("/asyncssh/")[0]
import os
result["site"] = site
result["site_enabled"] = sorted(os.listdir(site))
result["frames"] = frames.parse_frames("1-3")
service = importlib.import_module(name + ".core.service")
result["render_task"] = str(service.RENDER_TASK)
result["operators"] = sorted(dir(bpy.ops.braas_hpc))
result["prefs"] = type(bpy.context.preferences.addons[name].preferences.presets).__name__
bpy.ops.preferences.addon_disable(module=name)
result["after_disable"] = name in bpy.context.preferences.addons.keys()
result["site_disabled"] = sorted(os.listdir(site)) if os.path.isdir(site) else []
json.dump(result, open(report, "w"))
"""


def test_extension_builds_installs_and_unregisters(tmp_path: Path) -> None:
    built = run_cli("extension", "build", "--out", str(tmp_path / "dist"), "--platform", "linux-x64", "--json",
                    timeout=900)
    assert built.returncode == 0, built.stderr
    (zip_path,) = json.loads(built.stdout)["built"]
    resources = tmp_path / "blender-user"
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    report = tmp_path / "report.json"
    # A Python that has bpy and nothing of ours (Debian's, with the test cluster's bpy-only site dir and -S:
    # not even Debian's own dist-packages),
    # so the add-on can only import asyncssh and friends from the wheels it brought; and a private
    # Blender config, never the user's.
    layout = tb.Layout.from_env()
    tb.ensure_bpy(layout)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(layout.bpy_site),
           "BLENDER_USER_RESOURCES": str(resources)}
    done = subprocess.run([tb.SYSTEM_PYTHON, "-S", str(probe), zip_path, str(report)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and report.is_file(), done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["enabled"] is True and result["after_disable"] is False
    assert result["frames"] == [1, 2, 3]
    assert "submit" in result["operators"] and result["prefs"].startswith("bpy_prop_collection")  # the UI registered
    assert result["render_task"].startswith(str(resources)) and Path(result["render_task"]).is_file()
    assert result["site"].startswith(str(resources / "extensions"))  # imported from the installed wheels
    for package in ("asyncssh", "paramiko", "scp.py", "blender_asset_tracer", "platformdirs", "cryptography",
                    "tomli_w"):
        assert package in result["site_enabled"], f"{package} was not installed from the bundled wheels"
        assert package not in result["site_disabled"], f"{package} was left behind after disabling"
