"""The built extensions in every supported Blender (the bpy wheel of 4.2 LTS, 4.5 LTS, 5.0 and the newest
5.x, each on its own Python): Blender's own validator accepts every zip; they install with no network at all
(their own network namespace) from their own wheels, render the scene locally, share one copy of the core,
and leave nothing behind once disabled and uninstalled. `extension build` with no --platform builds every
platform of the manifest."""

from __future__ import annotations

import io
import json
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

from braas_hpc.extension import ADDONS
from tests.blender.bpy_builds import MATRIX, BpyBuild
from tests.conftest import run_cli
from tests.helpers import REPO, SAMPLE_SCRIPT, check_frame

PROBE = r"""
import importlib, json, os, subprocess, sys
main_zip, interactive_zip, scene, report, bpy_site, blender_binary = sys.argv[-6:]
# As in a downloaded Blender: bpy is importable here, but not by this Python started anew (sys.executable),
# and the add-on learns where Blender's executable is from bpy.app.binary_path.
sys.path.insert(0, bpy_site)
import bpy
bpy.app.binary_path = blender_binary
own_python = subprocess.run([sys.executable, "-S", "-c", "import bpy"], capture_output=True)
import errno, socket
try:  # the install below must need no network: this process has none (its own network namespace)
    socket.create_connection(("1.1.1.1", 443), timeout=5).close()
    network = "reachable"
except OSError as exc:
    network = errno.errorcode.get(exc.errno or 0, str(exc))
main, interactive = "bl_ext.user_default.braas_hpc", "bl_ext.user_default.braas_hpc_interactive"
result = {"blender": list(bpy.app.version[:2]), "python": list(sys.version_info[:2]),
          "own_python_imports_bpy": own_python.returncode == 0, "network": network}
bpy.ops.extensions.package_install_files(filepath=main_zip, repo="user_default", enable_on_install=True)
result["enabled"] = main in bpy.context.preferences.addons.keys()
import braas_hpc, asyncssh, paramiko, scp, blender_asset_tracer  # only the bundled wheels can provide these
from braas_hpc.core import frames, scripts
from braas_hpc.core.transport import pool
from braas_hpc.blender.addon import runtime
result["core"] = braas_hpc.__file__
result["asyncssh"] = asyncssh.__file__
site = asyncssh.__file__.split("/asyncssh/")[0]
result["site"] = site
result["site_enabled"] = sorted(os.listdir(site))
import _cffi_backend  # compiled for one Python: Blender picked the wheel for its own
result["cffi"] = os.path.basename(_cffi_backend.__file__)
result["frames"] = frames.parse_frames("1-3")
result["render_task"] = str(scripts.RENDER_TASK)
result["render_task_there"] = scripts.RENDER_TASK.is_file()  # gone with the wheels once all is disabled
result["operators"] = sorted(dir(bpy.ops.braas_hpc))
result["prefs"] = type(bpy.context.preferences.addons[main].preferences.presets).__name__
result["prompts_popups"] = pool.prompts is runtime.state.broker

# What an artist does first: render the open scene on this computer with the `local` preset.
bpy.ops.wm.open_mainfile(filepath=scene)
settings = bpy.context.scene.braas_hpc
settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "1"
result["submit"] = sorted(bpy.ops.braas_hpc.submit())
result["download"] = sorted(bpy.ops.braas_hpc.download_job())
jobs = bpy.context.window_manager.braas_hpc.jobs
result["jobs"] = [(j.name, j.state, j.frames_done, j.frames_total) for j in jobs]
result["job_folder"] = jobs[0].local_dir if len(jobs) else ""

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

# Uninstalled: both packages and their wheels leave the user's extensions repository.
repos = bpy.context.preferences.extensions.repos
index = next(i for i, repo in enumerate(repos) if repo.module == "user_default")
for package in ("braas_hpc", "braas_hpc_interactive"):
    result["uninstall_" + package] = sorted(bpy.ops.extensions.package_uninstall(
        repo_directory=repos[index].directory, repo_index=index, pkg_id=package))
result["repo_after_uninstall"] = sorted(n for n in os.listdir(repos[index].directory) if not n.startswith("."))
result["addons_after_uninstall"] = sorted(a for a in bpy.context.preferences.addons.keys() if "braas" in a)
result["site_after_uninstall"] = sorted(os.listdir(site)) if os.path.isdir(site) else []
cache = os.path.join(site, "__pycache__")
result["bytecode_after_uninstall"] = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
json.dump(result, open(report, "w"))
"""




SOURCES = {p.relative_to(REPO).as_posix() for package in ("braas_hpc", "braas_hpc_interactive")
           for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Every platform of the manifest (no --platform), as a user builds them: platform -> [main, interactive]."""
    out = tmp_path_factory.mktemp("dist")
    done = run_cli("extension", "build", "--out", str(out), "--json", timeout=900)
    assert done.returncode == 0, done.stderr
    zips = [Path(z) for z in json.loads(done.stdout)["built"]]
    platforms = tomllib.loads((REPO / "blender_manifest.toml").read_text())["platforms"]
    expected = sorted(f"{a.package}-0.1.0-{p}.zip" for p in platforms for a in ADDONS)
    assert sorted(z.name for z in zips) == expected and all(z.parent == out for z in zips)
    return {p: [out / f"{a.package}-0.1.0-{p}.zip" for a in ADDONS] for p in platforms}


def test_every_zip_bundles_wheels_for_both_pythons(built: dict[str, list[Path]]) -> None:
    for platform, zips in built.items():
        for path in zips:
            with zipfile.ZipFile(path) as archive:
                manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
                names = set(archive.namelist())
                (core,) = [n for n in names if n.startswith("wheels/braas_hpc-")]
                with zipfile.ZipFile(io.BytesIO(archive.read(core))) as wheel:
                    bundled = set(wheel.namelist())
            missing = SOURCES - bundled  # every module of the product, subpackages too, is in the core wheel
            assert not missing, f"{path.name} lacks {sorted(missing)}"
            assert manifest["platforms"] == [platform]
            assert {f"./{n}" for n in names if n.startswith("wheels/")} == set(manifest["wheels"])
            for python in sorted({b.python for b in MATRIX}):  # cffi has no stable-ABI wheel: one per Python
                tag = "cp" + python.replace(".", "")
                assert any(w.startswith("./wheels/cffi-") and f"-{tag}-{tag}-" in w for w in manifest["wheels"]), \
                    f"{path.name} has no cffi wheel for Python {python}"


@pytest.mark.parametrize("blender", MATRIX, ids=str)
def test_blenders_validator_accepts_every_zip(built: dict[str, list[Path]], blender: BpyBuild,
                                              tmp_path: Path) -> None:
    for path in (z for zips in built.values() for z in zips):
        done = subprocess.run([blender.interpreter(), "-S", str(blender.validator()), "validate", str(path)],
                              env=blender.env(tmp_path), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"Blender {blender.version} refuses {path.name}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("blender", MATRIX, ids=str)
def test_extensions_install_render_share_the_core_and_uninstall(built: dict[str, list[Path]], blender: BpyBuild,
                                                                tmp_path: Path) -> None:
    main_zip, interactive_zip = built["linux-x64"]
    # A Python that has this bpy and nothing of ours (-S: not even the interpreter's own site-packages), so
    # the add-ons can only import their code and asyncssh and friends from the wheels they brought; a
    # private Blender config, never the user's; a scene saved by this very Blender version.
    env = blender.env(tmp_path)
    resources = Path(env["BLENDER_USER_RESOURCES"])
    made = subprocess.run([blender.interpreter(), "-S", str(SAMPLE_SCRIPT), str(tmp_path / "scene")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    report = tmp_path / "report.json"
    # Blender's executable, for the add-on to pack and render with: this bpy behind Blender's command line.
    # Its Python is not the add-on's way to Blender: the probe's own environment cannot import bpy.
    binary, calls = tmp_path / "blender-app" / "blender", tmp_path / "blender-calls.txt"
    binary.parent.mkdir()
    binary.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\nPYTHONPATH="{env["PYTHONPATH"]}" exec '
                      f'"{blender.interpreter()}" -S "{REPO / "braas_hpc" / "bpy_blender.py"}" "$@"\n')
    binary.chmod(0o755)
    stock = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    # Offline, as on a workstation with no route to PyPI: a network namespace of its own with no interface up.
    done = subprocess.run(["unshare", "--net", blender.interpreter(), "-S", str(probe), str(main_zip),
                           str(interactive_zip), str(tmp_path / "scene" / "sample.blend"), str(report),
                           env["PYTHONPATH"], str(binary)],
                          env=stock, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0 and report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["blender"] == [int(n) for n in blender.series.split(".")]
    assert result["python"] == [int(n) for n in blender.python.split(".")]
    assert result["own_python_imports_bpy"] is False  # as inside a downloaded Blender
    assert result["network"] == "ENETUNREACH", result["network"]  # installed and rendered with no network
    assert result["enabled"] is True and result["after_disable"] is False
    assert result["frames"] == [1, 2, 3]
    assert "submit" in result["operators"] and result["prefs"].startswith("bpy_prop_collection")  # the UI registered
    assert result["render_task"].startswith(str(resources)) and result["render_task_there"] is True
    assert result["site"].startswith(str(resources / "extensions"))  # imported from the installed wheels
    assert result["core"].startswith(result["site"]) and result["prompts_popups"] is True
    assert result["cffi"].startswith(f"_cffi_backend.cpython-{blender.python.replace('.', '')}-")
    # The local render: one frame of the scene, downloaded to the job's folder in the private HOME.
    assert result["submit"] == ["FINISHED"] and result["download"] == ["FINISHED"]
    ((name, state, done_frames, total),) = result["jobs"]
    assert (state, done_frames, total) == ("COMPLETED", 1, 1)
    assert Path(result["job_folder"]) == tmp_path / "braas-hpc" / name
    check_frame(Path(result["job_folder"]) / "frame_000001.png")
    logs = [log.read_text() for log in tmp_path.rglob("*.log") if name in log.parts]
    assert logs and all(f"Blender {blender.version}" in log for log in logs), logs  # rendered by this Blender
    used = calls.read_text()  # the running Blender's executable asked its version, packed and rendered
    assert "--version" in used and "pack_scene.py" in used and "render_task.py" in used, used
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
    # Uninstalled: nothing registered, nothing of ours left in the extensions repository or its site dir.
    assert result["uninstall_braas_hpc"] == ["FINISHED"] and result["uninstall_braas_hpc_interactive"] == ["FINISHED"]
    assert result["repo_after_uninstall"] == [] and result["addons_after_uninstall"] == []
    assert [n for n in result["site_after_uninstall"] if n != "__pycache__"] == []
    # Blender removes the files each wheel lists; Python's bytecode of single-module wheels (scp.py,
    # typing_extensions.py) stays in __pycache__, which nothing imports without its source.
    assert {n.split(".")[0] for n in result["bytecode_after_uninstall"]} <= {"scp", "typing_extensions"}, \
        result["bytecode_after_uninstall"]
