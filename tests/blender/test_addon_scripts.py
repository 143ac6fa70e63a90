"""A .blend cannot opt itself into running its code: the add-on asks for each submission, never stores
the answer in the file, and never runs what Blender itself blocked when it opened the file."""

from __future__ import annotations

from pathlib import Path

from tests.blender.addon_runner import Session
from tests.helpers import make_sample


def test_a_files_scripts_run_only_when_asked_for_that_job_and_trusted_by_blender(tmp_path: Path) -> None:
    sample = make_sample(tmp_path / "scene")
    evil, canary = tmp_path / "scene" / "downloaded.blend", tmp_path / "canary.txt"
    got = Session(tmp_path / "user").run(f"""
bpy.ops.wm.open_mainfile(filepath={str(sample)!r})
payload = bpy.data.texts.new("payload.py")
payload.write("import bpy\\nopen({str(canary)!r}, 'a').write(bpy.data.filepath + chr(10))\\n")
payload.use_module = True  # runs whenever the file is opened with scripts allowed
bpy.context.scene.braas_hpc["allow_scripts"] = True  # what an earlier version kept in the file
bpy.ops.wm.save_as_mainfile(filepath={str(evil)!r})

def runs_in_jobs():
    try:
        return sum(1 for line in open({str(canary)!r}) if line.strip().endswith("/in/scene.blend"))
    except FileNotFoundError:
        return 0

def submit(**options):
    try:
        return sorted(bpy.ops.braas_hpc.submit(**options))
    except RuntimeError as error:  # an operator's error report, in background mode
        return str(error)

bpy.ops.wm.open_mainfile(filepath={str(evil)!r})  # as downloaded: Blender does not auto-run its scripts
result["blocked_here"] = bpy.app.autoexec_fail
result["stored_in_scene"] = "allow_scripts" in type(bpy.context.scene.braas_hpc).bl_rna.properties
settings = bpy.context.scene.braas_hpc
settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "1"
result["plain"] = submit()
result["after_plain"] = runs_in_jobs()
result["asked_but_blocked"] = submit(allow_scripts=True)
result["after_blocked"] = runs_in_jobs()
# The user trusts the file in Blender (Reload Trusted), then asks for its scripts for one job.
bpy.context.preferences.filepaths.use_scripts_auto_execute = True
bpy.ops.wm.open_mainfile(filepath={str(evil)!r})
settings = bpy.context.scene.braas_hpc
settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "1"
result["trusted_and_asked"] = submit(allow_scripts=True)
result["after_asked"] = runs_in_jobs()
result["next_job"] = submit()  # the answer is not kept for the next submission
result["after_next"] = runs_in_jobs()
""", timeout=900)
    assert got["blocked_here"] is True and got["stored_in_scene"] is False
    assert got["plain"] == ["FINISHED"] and got["after_plain"] == 0  # the planted opt-in is ignored
    assert "Blender blocked the scripts of downloaded.blend" in got["asked_but_blocked"]
    assert got["after_blocked"] == 0
    assert got["trusted_and_asked"] == ["FINISHED"] and got["after_asked"] == 1
    assert got["next_job"] == ["FINISHED"] and got["after_next"] == 1
