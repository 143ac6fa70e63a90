"""Forgetting jobs, with real local renders: `braas-hpc forget` and the add-on's Remove from List take a
job off the list (and its cached thumbnail), never its files, and refuse a job that may still run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.blender.addon_runner import Session
from tests.conftest import run_cli
from tests.helpers import make_sample


def _submit(scene: Path, frames: str, chunk: str = "1") -> tuple[str, Path]:
    done = run_cli("submit", str(scene), "--preset", "local", "--frames", frames, "--chunk", chunk, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    return result["job"], Path(result["job_dir"])


def _listed() -> list[str]:
    done = run_cli("status", "--json", "--no-recover")
    assert done.returncode == 0, done.stderr
    return [entry["job"] for entry in json.loads(done.stdout)["jobs"]]


def test_forget_takes_ended_jobs_off_the_list_and_refuses_a_running_one(user_dirs: dict[str, str],
                                                                         tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "project")
    ended, ended_dir = _submit(scene, "1")
    assert run_cli("wait", ended).returncode == 0
    running, _ = _submit(scene, "1-400", "200")  # far from done while the test runs

    unknown = run_cli("forget", ended, "no-such-job")
    assert unknown.returncode == 2 and "no job named 'no-such-job'" in unknown.stderr
    refused = run_cli("forget", ended, running)
    assert refused.returncode == 2
    assert f"job {running} is " in refused.stderr and "it may still be using the allocation" in refused.stderr
    assert f"braas-hpc cancel {running}" in refused.stderr and "--force" in refused.stderr
    assert _listed() == [ended, running]  # all or none: the ended one was not forgotten either

    forgotten = run_cli("forget", ended)
    assert forgotten.returncode == 0, forgotten.stderr
    assert f"forgot {ended} (local, COMPLETED)" in forgotten.stdout
    assert _listed() == [running]
    assert (ended_dir / "out" / "frame_000001.png").is_file()  # the job's files stay where they are

    assert run_cli("cancel", running).returncode == 0
    assert json.loads(run_cli("forget", running, "--json").stdout) == {"schema": 1, "forgotten": [running]}
    assert _listed() == []


def test_remove_from_list_removes_the_row_and_its_thumbnail_for_good(tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "scene")
    session = Session(tmp_path / "user")
    first = session.run(f"""
        import dataclasses, time
        from braas_hpc.core import registry
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        settings = bpy.context.scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "1"
        assert bpy.ops.braas_hpc.submit() == {{"FINISHED"}}
        jobs = bpy.context.window_manager.braas_hpc.jobs
        deadline = time.monotonic() + 120
        while not jobs[0].thumbnail and time.monotonic() < deadline:  # the finish step's thumb.jpg, once made
            bpy.ops.braas_hpc.refresh_jobs()
            time.sleep(0.2)
        result["before"] = [(j.name, j.state, j.thumbnail) for j in jobs]
        # A job of a cluster whose preset file has been removed since (the registry keeps its record).
        record = registry.get_job(jobs[0].name)
        orphan = dataclasses.replace(record.spec, name="orphan", preset="gone")
        registry.add_job(orphan, record.remote_root, {{}}, "FAILED")
    """)
    ((name, state, thumbnail),) = first["before"]
    assert state == "COMPLETED" and thumbnail == str(tmp_path / "user" / "data" / "thumbnails" / f"{name}.jpg")

    second = session.run("""
        from braas_hpc.blender.addon import runtime
        jobs = bpy.context.window_manager.braas_hpc.jobs
        result["listed"] = [j.name for j in jobs]
        # The refresh answers for the job it can ask, and says what is wrong with the other.
        result["refresh"] = sorted(bpy.ops.braas_hpc.refresh_jobs())
        result["message"] = [runtime.state.message.level, runtime.state.message.text]
        result["removed"] = []
        for _ in range(2):
            bpy.context.window_manager.braas_hpc.active_job = 0
            top = jobs[0].name
            result["removed"].append(top if bpy.ops.braas_hpc.remove_job() == {"FINISHED"} else "")
        result["after"] = [j.name for j in jobs]
        result["active"] = bpy.context.window_manager.braas_hpc.active_job
    """)
    assert second["listed"] == ["orphan", name] and second["refresh"] == ["FINISHED"]  # newest first
    assert second["message"] == ["WARNING", "orphan: preset 'gone' no longer exists: braas-hpc forget orphan "
                                            "(in Blender: Remove from List)"]
    assert second["removed"] == ["orphan", name] and second["after"] == [] and second["active"] == -1
    assert not Path(thumbnail).exists()

    third = session.run("""
        from braas_hpc.core import registry
        result["jobs"] = [j.name for j in bpy.context.window_manager.braas_hpc.jobs]
        result["registry"] = [r.name for r in registry.list_jobs()]
    """)
    assert third == {"jobs": [], "registry": []}
