"""The add-on's operators drive real jobs on the test cluster, in Blender's background mode (where each
operator runs to completion): submit, refresh until done, download, resubmit lost frames, cancel; and a
restarted Blender finds the jobs in its list again."""

from __future__ import annotations

import shlex
from pathlib import Path

from tests.blender.addon_runner import Session
from tests.helpers import check_frame, make_sample

WAIT_FOR_END = """
import time
def wait_until_ended(name, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        bpy.ops.braas_hpc.refresh_jobs()
        job = bpy.context.window_manager.braas_hpc.jobs[name]
        if job.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            return (job.state, job.frames_done, job.frames_total, job.missing)
        time.sleep(1.5)
    raise SystemExit(f"job {name} did not end in {limit} s")
"""


def test_operators_submit_watch_download_resubmit_and_cancel(testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "scene")
    session = Session(tmp_path / "user")
    first = session.run(prelude=WAIT_FOR_END, script=f"""
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        settings = bpy.context.scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames = "testbed", "CUSTOM", "1-3"
        settings.chunk, settings.project = 2, "addon test"
        settings.retries = 0  # the lost frame below is for Resubmit Missing Frames, not automatic recovery
        result["submit"] = sorted(bpy.ops.braas_hpc.submit())
        jobs = bpy.context.window_manager.braas_hpc.jobs
        name = jobs[0].name
        result["name"], result["ids"] = name, jobs[0].scheduler_ids
        result["ended"] = wait_until_ended(name)
        # The finish step's thumbnail shows before any frame is downloaded.
        deadline = time.time() + 90
        while not jobs[name].thumbnail and time.time() < deadline:
            time.sleep(1.5)
            bpy.ops.braas_hpc.refresh_jobs()
        result["cluster_thumbnail"] = jobs[name].thumbnail
        jobs[name].thumbnail = ""
        result["download"] = sorted(bpy.ops.braas_hpc.download_job(job=name))
        result["thumbnail"] = jobs[name].thumbnail
    """)
    name = first["name"]
    assert first["submit"] == ["FINISHED"] and name.startswith("addon_test-") and first["ids"]
    assert first["ended"] == ["COMPLETED", 3, 3, ""]
    folder = tmp_path / "user" / "home" / "braas-hpc" / name
    for frame in (1, 2, 3):
        check_frame(folder / f"frame_{frame:06d}.png")
    assert first["thumbnail"] == str(folder / "frame_000003.png")
    cluster_thumbnail = Path(first["cluster_thumbnail"])
    assert cluster_thumbnail.name == f"{name}.jpg" and cluster_thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"

    # A frame lost on the cluster after the job ended: the restarted add-on sees the job fail and
    # re-renders only that frame.
    out = shlex.quote(f"{testbed.workdir}/braas-hpc-{testbed.user}/jobs/{name}/out/frame_000002.png")
    assert remote(f"rm {out}").returncode == 0
    second = session.run(prelude=WAIT_FOR_END, script=f"""
        jobs = bpy.context.window_manager.braas_hpc.jobs
        result["restored"] = [(j.name, j.state) for j in jobs]
        bpy.ops.braas_hpc.refresh_jobs()
        result["after_loss"] = (jobs[{name!r}].state, jobs[{name!r}].missing)
        result["resubmit"] = sorted(bpy.ops.braas_hpc.resubmit_failed(job={name!r}))
        result["ended"] = wait_until_ended({name!r})
        bpy.ops.braas_hpc.job_info(job={name!r})
        result["info"] = bpy.data.texts[0].as_string()
    """)
    assert second["restored"] == [[name, "COMPLETED"]]
    assert second["after_loss"] == ["FAILED", "2"]
    assert second["resubmit"] == ["FINISHED"] and second["ended"] == ["COMPLETED", 3, 3, ""]
    assert "resubmissions: 1" in second["info"] and "task-1.log" in second["info"]
    assert remote(f"test -s {out}").returncode == 0

    third = session.run(prelude=WAIT_FOR_END, script=f"""
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        settings = bpy.context.scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames = "testbed", "CUSTOM", "1-40"
        jobs = bpy.context.window_manager.braas_hpc.jobs
        before = {{j.name for j in jobs}}
        bpy.ops.braas_hpc.submit()
        (newest,) = {{j.name for j in jobs}} - before
        result["newest_first"] = jobs[0].name == newest
        result["cancel"] = sorted(bpy.ops.braas_hpc.cancel_job(job=newest))
        result["ended"] = wait_until_ended(newest)
    """)
    assert third["cancel"] == ["FINISHED"] and third["ended"][0] == "CANCELLED" and third["newest_first"]


def test_test_connections_reports_per_cluster(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    import os

    closed = Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets" / "closed.toml"  # the session's presets
    try:
        got = _test_connections(tmp_path)
    finally:
        closed.unlink(missing_ok=True)
    assert got["reports"]["testbed"].startswith("ok: ") and "sbatch" in got["reports"]["testbed"]
    assert "writable" in got["reports"]["testbed"]
    assert got["reports"]["closed"] and not got["reports"]["closed"].startswith("ok")
    assert "closed:" in got["outcome"] and "testbed:" not in got["outcome"]


def _test_connections(tmp_path: Path) -> dict:
    return Session(tmp_path / "user").run("""
        from braas_hpc.core.user_presets import save_user_preset
        # A second cluster that refuses connections (nothing listens on port 1 of loopback).
        save_user_preset("closed", {"scheduler": "slurm", "host": "127.0.0.1", "port": 1, "workdir": "/w",
                                    "known_hosts": prefs.presets["testbed"].known_hosts or ""})
        bpy.ops.braas_hpc.presets_reload()
        try:
            bpy.ops.braas_hpc.test_connections()
            result["outcome"] = "no error"
        except RuntimeError as error:
            result["outcome"] = str(error)
        result["reports"] = {item.name: item.report for item in prefs.presets}
    """)


def test_find_workdirs_then_choose_then_install(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    import dataclasses
    import os

    from braas_hpc.core.presets import load_preset
    from tests.retarget import to_toml

    # A cluster whose working directory is not set yet; its site command prints $HOME.
    unset = dataclasses.replace(load_preset("testbed"), name="tbfind", workdir="", workdir_command=("printenv", "HOME"),
                                workdir_hint="/home/{user}/work or /nowhere/{user}")
    presets_dir = Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets"
    (presets_dir / "tbfind.toml").write_text(to_toml(unset))
    try:
        got = Session(tmp_path / "user").run("""
            from braas_hpc.core.presets import load_preset
            bpy.ops.braas_hpc.presets_reload()
            for other in prefs.presets:
                other.enabled = other.name == "tbfind"
            bpy.ops.braas_hpc.find_workdirs()
            item = prefs.presets["tbfind"]
            result["found"] = [(c.name, c.source, c.exists, c.writable) for c in item.candidates]
            result["before"] = load_preset("tbfind").workdir
            try:
                bpy.ops.braas_hpc.use_workdir(preset="tbfind", path="/etc")
            except RuntimeError as error:
                result["refused"] = str(error)
            bpy.ops.braas_hpc.use_workdir(preset="tbfind", path="/home/braastb/work")
            result["after"] = load_preset("tbfind").workdir
            bpy.ops.braas_hpc.install()
            result["install"] = item.report
            bpy.ops.braas_hpc.install()
            result["again"] = item.report
        """)
    finally:
        (presets_dir / "tbfind.toml").unlink()
    found = {path: (exists, writable) for path, _source, exists, writable in got["found"]}
    assert found["/home/braastb"] == (True, True) and found["/home/braastb/work"] == (True, True)
    assert found["/nowhere/braastb"] == (False, False)
    assert got["before"] == "" and got["after"] == "/home/braastb/work"  # set only when the user chose it
    assert "is not a directory found" in got["refused"]
    assert got["install"].startswith("ok: scripts ") and got["again"].endswith("already installed")
