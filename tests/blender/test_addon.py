"""The braas_hpc add-on in real Blender (the bpy wheel), background mode: registration, preferences,
the operators on the `local` preset, the jobs list across a restart, and the checks before upload."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.blender.addon_runner import Session
from tests.helpers import check_frame, make_sample

SECRET = "correct-horse-battery-7391"


def test_register_and_unregister_leave_nothing(tmp_path: Path) -> None:
    got = Session(tmp_path).run("""
        import threading
        result["ops"] = sorted(dir(bpy.ops.braas_hpc))
        result["panel"] = hasattr(bpy.types, "BRAAS_HPC_PT_main")
        result["scene_prop"] = hasattr(bpy.context.scene, "braas_hpc")
        result["loop"] = any(t.name == "braas-hpc-loop" for t in threading.enumerate())
        addon_utils.disable("braas_hpc", default_set=True)
        result["after_types"] = [n for n in dir(bpy.types) if n.startswith("BRAAS_HPC")]
        result["after_scene_prop"] = hasattr(bpy.types.Scene, "braas_hpc")
        result["after_wm_prop"] = hasattr(bpy.types.WindowManager, "braas_hpc")
        result["after_loop"] = any(t.name == "braas-hpc-loop" for t in threading.enumerate())
        result["after_handlers"] = [h.__name__ for h in bpy.app.handlers.load_post if "braas" in h.__module__]
        result["after_ops"] = [n for n in dir(bpy.ops.braas_hpc) if hasattr(getattr(bpy.ops.braas_hpc, n), "poll")
                               and getattr(bpy.ops.braas_hpc, n).get_rna_type() is not None] \
            if hasattr(bpy.ops, "braas_hpc") else []
    """)
    for op in ("submit", "refresh_jobs", "cancel_job", "download_job", "resubmit_failed", "job_info", "remove_job",
               "open_folder", "abort", "trust_host", "answer_prompt", "preset_add", "preset_remove",
               "test_connections"):
        assert op in got["ops"]
    assert got["panel"] and got["scene_prop"] and got["loop"]
    assert got["after_types"] == [] and not got["after_scene_prop"] and not got["after_wm_prop"]
    assert not got["after_loop"] and got["after_handlers"] == []


def test_preferences_round_trip_stores_no_secret(tmp_path: Path) -> None:
    session = Session(tmp_path)
    first = session.run(f"""
        from braas_hpc.addon_kit.prompting import Question
        from braas_hpc.blender.addon import runtime
        bpy.ops.braas_hpc.preset_add(base="karolina")
        item = prefs.presets[0]
        item.user, item.account, item.workdir = "alice", "dd-24-7", "/scratch/project/dd-24-7"
        item.device, item.enabled = "GPU", False
        item.port = 0 if False else 2222
        prefs.storage_dir = {str(tmp_path / "frames")!r}
        # A passphrase answered through the popup operator goes to the waiting connection and nowhere else.
        question = Question("passphrase", "Passphrase for /k", "", [("Passphrase", False)])
        runtime.state.question = question
        bpy.ops.braas_hpc.answer_prompt(answer_1={SECRET!r})
        result["answered"] = question._answers
        last = bpy.context.window_manager.operator_properties_last("braas_hpc.answer_prompt")
        result["remembered"] = last.answer_1
        # A bad value is refused with the schema's message, and the file keeps the last good one.
        item.workdir = "relative/path"
        result["error"] = item.error
        bpy.ops.wm.save_userpref()
    """)
    assert first["answered"] == [SECRET] and first["remembered"] == ""
    assert "workdir 'relative/path' must be an absolute path" in first["error"]
    preset_file = tmp_path / "config" / "presets" / "karolina.toml"
    text = preset_file.read_text()
    assert 'base = "karolina"' in text and 'user = "alice"' in text and "/scratch/project/dd-24-7" in text
    assert "relative/path" not in text

    second = session.run("""
        from braas_hpc.core.presets import load_preset
        result["rows"] = [(i.name, i.user, i.account, i.workdir, i.device, i.enabled, i.port) for i in prefs.presets]
        result["storage"] = prefs.storage_dir
        preset = load_preset("karolina")
        result["preset"] = [preset.user, preset.host, preset.partition_gpu, preset.port]
        bpy.context.scene.braas_hpc.preset = "karolina"
        result["job_device"] = bpy.context.scene.braas_hpc.device  # the cluster's CPU/GPU choice
    """)
    assert second["rows"] == [["karolina", "alice", "dd-24-7", "/scratch/project/dd-24-7", "GPU", False, 2222]]
    assert second["storage"] == str(tmp_path / "frames") and second["job_device"] == "GPU"
    assert second["preset"] == ["alice", "karolina.it4i.cz", "qgpu", 2222]  # the catalogue's values inherited
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()
              and p.name not in ("script.py",)]
    assert leaked == [], f"the secret was written to {leaked}"
    assert (tmp_path / "blender" / "config" / "userpref.blend").is_file()  # what was scanned includes it


def test_operators_render_locally_and_the_list_survives_a_restart(tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "scene")
    session = Session(tmp_path / "user")
    first = session.run(f"""
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        settings = bpy.context.scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "1-2"
        result["submit"] = sorted(bpy.ops.braas_hpc.submit())
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})  # the settings were saved before the job was sent
        result["saved"] = bpy.context.scene.braas_hpc.custom_frames == "1-2"
        result["download"] = sorted(bpy.ops.braas_hpc.download_job())
        jobs = bpy.context.window_manager.braas_hpc.jobs
        result["jobs"] = [(j.name, j.state, j.frames_done, j.frames_total, j.thumbnail) for j in jobs]
        result["info"] = sorted(bpy.ops.braas_hpc.job_info())
        result["text"] = bpy.data.texts[0].as_string()
    """)
    assert first["submit"] == ["FINISHED"] and first["download"] == ["FINISHED"] and first["saved"]
    ((name, state, done, total, thumbnail),) = first["jobs"]
    assert (state, done, total) == ("COMPLETED", 2, 2)
    folder = tmp_path / "user" / "home" / "braas-hpc" / name
    assert Path(thumbnail) == folder / "frame_000002.png"
    for frame in (1, 2):
        check_frame(folder / f"frame_{frame:06d}.png")
    assert f"Job {name} on local" in first["text"] and "task-1.log" in first["text"]

    second = session.run("""
        jobs = bpy.context.window_manager.braas_hpc.jobs
        result["jobs"] = [(j.name, j.state, j.frames_total, j.thumbnail) for j in jobs]
    """)
    assert second["jobs"] == [[name, "COMPLETED", 2, thumbnail]]


def test_checks_before_upload_give_clear_messages(tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "scene")
    (texture,) = (tmp_path / "scene").rglob("*.png")
    got = Session(tmp_path / "user").run(f"""
        import os
        def attempt():
            try:
                bpy.ops.braas_hpc.submit()
                return "submitted"
            except RuntimeError as error:
                return str(error)
        settings = bpy.context.scene.braas_hpc
        settings.preset = "local"
        result["unsaved"] = attempt()
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        settings = bpy.context.scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "9-3"
        result["frames"] = attempt()
        settings.custom_frames = "1"
        bpy.context.scene.render.engine = "BLENDER_EEVEE_NEXT"  # in the open scene only: the file says Cycles
        result["eevee"] = attempt()
        result["eevee_unsaved"] = bpy.data.is_dirty
        bpy.context.scene.render.engine = "CYCLES"
        os.remove({str(texture)!r})  # the scene's external texture is now missing
        result["missing"] = attempt()
        result["jobs"] = len(bpy.context.window_manager.braas_hpc.jobs)
    """)
    assert "save the .blend file first" in got["unsaved"]
    assert "9-3" in got["frames"] and "ends before it starts" in got["frames"]
    assert "renders with EEVEE" in got["eevee"] and "Render Properties > Render Engine" in got["eevee"]
    assert got["eevee_unsaved"]  # refused before the file was saved
    assert "1 file(s) the scene uses are missing" in got["missing"] and 'image "checker.png"' in got["missing"]
    assert got["jobs"] == 0  # nothing was submitted


def test_offline_blender_refuses_clusters_but_renders_locally(tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "scene")
    shutil.copy(scene, tmp_path / "copy.blend")
    got = Session(tmp_path / "user").run(f"""
        from braas_hpc.core.user_presets import save_user_preset
        save_user_preset("faraway", {{"scheduler": "slurm", "host": "hpc.invalid", "workdir": "/w"}})
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        settings = bpy.context.scene.braas_hpc
        settings.preset = "faraway"
        try:
            bpy.ops.braas_hpc.submit()
            result["cluster"] = "submitted"
        except RuntimeError as error:
            result["cluster"] = str(error)
        settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "1"
        result["local"] = sorted(bpy.ops.braas_hpc.submit())
    """, online=False)
    assert "online access is off" in got["cluster"]
    assert got["local"] == ["FINISHED"]


def test_abort_really_stops_a_local_render(tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "scene")
    got = Session(tmp_path / "user").run(f"""
        import subprocess, time
        from pathlib import Path
        from braas_hpc.blender import activity
        from braas_hpc.blender.addon import runtime
        from braas_hpc.core.spec import SubmitRequest
        from braas_hpc.core import registry
        request = SubmitRequest(scene=Path({str(scene)!r}), preset="local", frames="1-30")
        # What the panel does in the UI: the operation runs on the loop while the main thread goes on.
        operation = runtime.state.bridge.run("Rendering here", lambda: activity.submit(request), "submit")
        deadline = time.time() + 120
        while (operation.snapshot().stage, operation.snapshot().done >= 1) != ("rendering", True) \
                and time.time() < deadline:
            time.sleep(0.1)
        result["frames_before_abort"] = operation.snapshot().done
        started = time.time()
        bpy.ops.braas_hpc.abort()
        while not operation.finished and time.time() < deadline:
            time.sleep(0.05)
        result["stop_s"] = time.time() - started
        result["cancelled"] = operation.cancelled
        # The operation ends at once; the job's cancel goes on on the loop (the queue stops its task).
        while (job := registry.list_jobs()[0]).state == "PENDING" and time.time() < started + 10:
            time.sleep(0.05)
        result["state"] = job.state
        # The job's queue stops its render task (its finish step may still write the summary after it).
        rendering = ["pgrep", "-f", f"render_task[.]py -- --job-dir [^ ]*/{{job.name}} "]
        while (renderers := subprocess.run(rendering, capture_output=True, text=True).stdout) \
                and time.time() < started + 10:
            time.sleep(0.1)
        result["renderers"] = renderers
        result["message"] = runtime.state.message.text
    """)
    assert 1 <= got["frames_before_abort"] < 30
    assert got["cancelled"] and got["stop_s"] < 5
    assert got["state"] == "CANCELLED"
    assert got["renderers"] == "", "a Blender kept rendering after Abort"
    assert "stopped 1 operation" in got["message"]


def test_pump_hands_results_to_the_main_thread_and_holds_an_unknown_host_for_the_user(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    got = Session(tmp_path).run(prelude=f"KNOWN_HOSTS = {str(known_hosts)!r}\n", script="""
        import asyncio, threading, time
        from braas_hpc.blender.addon import runtime
        from braas_hpc.core.errors import HostKeyUnknown
        seen, retried = [], []
        def deliver(factory, on_done):
            def finish(op):
                runtime._finish(op, on_done, lambda: retried.append(1))
            runtime.state.bridge.run("Work", factory, on_done=finish)
        async def fine():
            return threading.current_thread().name
        async def unknown_host():
            raise HostKeyUnknown("unknown", "hpc.example.org", 22, "ssh-ed25519", "SHA256:abc", "ssh-ed25519 AAAA",
                                 KNOWN_HOSTS)
        deliver(fine, lambda value: seen.append((value, threading.current_thread().name)))
        deliver(unknown_host, lambda value: seen.append("should not run"))
        deadline = time.time() + 10
        while (len(seen) < 1 or runtime.state.host_key is None) and time.time() < deadline:
            result["next_s"] = runtime.pump()
            time.sleep(0.02)
        result["seen"] = seen
        error, retry = runtime.state.host_key
        result["host"] = [error.host, error.fingerprint]
        result["idle_next_s"] = runtime.pump()
        result["retried"] = len(retried)
    """)
    assert got["seen"] == [["braas-hpc-loop", "MainThread"]]  # computed on the loop, delivered on the main thread
    assert got["host"] == ["hpc.example.org", "SHA256:abc"]
    assert got["idle_next_s"] == 1.0  # nothing running: the timer slows down
    assert got["retried"] == 0 and not known_hosts.exists()  # without a user's yes nothing is trusted
