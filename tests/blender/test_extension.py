"""The built extensions install and enable in real Blender (the bpy wheel), offline from their own
wheels, share one copy of the core, and leave nothing registered once disabled."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import run_cli
from tests.testbed import testbed as tb

PROBE = r"""
import importlib, json, os, sys
import bpy
main_zip, interactive_zip, report = sys.argv[-3:]
main, interactive = "bl_ext.user_default.braas_hpc", "bl_ext.user_default.braas_hpc_interactive"
bpy.ops.extensions.package_install_files(filepath=main_zip, repo="user_default", enable_on_install=True)
result = {"enabled": main in bpy.context.preferences.addons.keys()}
import braas_hpc, asyncssh, paramiko, scp, blender_asset_tracer  # only the bundled wheels can provide these
from braas_hpc.core import frames, install
from braas_hpc.core.transport import pool
from braas_hpc.blender import runtime
result["core"] = braas_hpc.__file__
result["asyncssh"] = asyncssh.__file__
site = asyncssh.__file__.split("/asyncssh/")[0]
result["site"] = site
result["site_enabled"] = sorted(os.listdir(site))
result["frames"] = frames.parse_frames("1-3")
result["render_task"] = str(install.RENDER_TASK)
result["render_task_there"] = install.RENDER_TASK.is_file()  # gone with the wheels once all is disabled
result["operators"] = sorted(dir(bpy.ops.braas_hpc))
result["prefs"] = type(bpy.context.preferences.addons[main].preferences.presets).__name__
result["prompts_popups"] = pool.prompts is runtime.state.broker

bpy.ops.extensions.package_install_files(filepath=interactive_zip, repo="user_default", enable_on_install=True)
result["interactive_enabled"] = interactive in bpy.context.preferences.addons.keys()
import braas_hpc_interactive
from braas_hpc_interactive.core import session
result["interactive_core"] = braas_hpc_interactive.__file__
result["interactive_operators"] = sorted(dir(bpy.ops.braas_hpc_interactive))
result["shared_prompts"] = importlib.import_module("braas_hpc.core.transport").pool.prompts is runtime.state.broker
result["wheel_copies"] = sorted(n for n in os.listdir(site) if n.startswith("braas_hpc"))

bpy.ops.preferences.addon_disable(module=main)
result["after_disable"] = main in bpy.context.preferences.addons.keys()
result["prompts_after_main_disabled"] = type(pool.prompts).__name__
result["interactive_still_enabled"] = interactive in bpy.context.preferences.addons.keys()
result["site_interactive_only"] = sorted(os.listdir(site)) if os.path.isdir(site) else []
bpy.ops.preferences.addon_disable(module=interactive)
result["interactive_after_disable"] = interactive in bpy.context.preferences.addons.keys()
result["interactive_operators_after"] = sorted(dir(bpy.ops.braas_hpc_interactive))
result["site_disabled"] = sorted(os.listdir(site)) if os.path.isdir(site) else []
json.dump(result, open(report, "w"))
"""


def test_extensions_build_install_share_the_core_and_unregister(tmp_path: Path) -> None:
    built = run_cli("extension", "build", "--out", str(tmp_path / "dist"), "--platform", "linux-x64", "--json",
                    timeout=900)
    assert built.returncode == 0, built.stderr
    main_zip, interactive_zip = json.loads(built.stdout)["built"]
    assert Path(main_zip).name == "braas_hpc-0.1.0-linux-x64.zip"
    assert Path(interactive_zip).name == "braas_hpc_interactive-0.1.0-linux-x64.zip"
    resources = tmp_path / "blender-user"
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    report = tmp_path / "report.json"
    # A Python that has bpy and nothing of ours (Debian's, with the test cluster's bpy-only site dir and -S:
    # not even Debian's own dist-packages), so the add-ons can only import their code and asyncssh and
    # friends from the wheels they brought; and a private Blender config, never the user's.
    layout = tb.Layout.from_env()
    tb.ensure_bpy(layout)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(layout.bpy_site),
           "BLENDER_USER_RESOURCES": str(resources)}
    done = subprocess.run([tb.SYSTEM_PYTHON, "-S", str(probe), main_zip, interactive_zip, str(report)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and report.is_file(), done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["enabled"] is True and result["after_disable"] is False
    assert result["frames"] == [1, 2, 3]
    assert "submit" in result["operators"] and result["prefs"].startswith("bpy_prop_collection")  # the UI registered
    assert result["render_task"].startswith(str(resources)) and result["render_task_there"] is True
    assert result["site"].startswith(str(resources / "extensions"))  # imported from the installed wheels
    assert result["core"].startswith(result["site"]) and result["prompts_popups"] is True
    # The interactive add-on runs on the same modules: one copy of the wheel, BRaaS-HPC's popups answer for it.
    assert result["interactive_enabled"] is True and "start_session" in result["interactive_operators"]
    assert result["interactive_core"].startswith(result["site"]) and result["shared_prompts"] is True
    assert result["wheel_copies"] == ["braas_hpc", "braas_hpc-0.1.0.dist-info", "braas_hpc_interactive"]
    # BRaaS-HPC disabled: its popups no longer answer; the interactive add-on and the wheels it needs stay.
    assert result["prompts_after_main_disabled"] == "NoPrompts" and result["interactive_still_enabled"] is True
    assert "braas_hpc" in result["site_interactive_only"] and "asyncssh" in result["site_interactive_only"]
    assert result["interactive_after_disable"] is False and "start_session" not in result["interactive_operators_after"]
    for package in ("asyncssh", "paramiko", "scp.py", "blender_asset_tracer", "platformdirs", "cryptography",
                    "tomli_w", "braas_hpc", "cluster_scripts"):
        assert package in result["site_enabled"], f"{package} was not installed from the bundled wheels"
        assert package not in result["site_disabled"], f"{package} was left behind after disabling"
