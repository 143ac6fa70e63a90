"""One animation over two clusters from the panel, on the test cluster, in Blender's background mode: two
presets chosen (the cluster and "Also on"), Submit, and nothing but the jobs list's Refresh drives the
group until every frame has landed; the list shows one row with each cluster's share; Download brings
every member's frames into one folder. Each refresh asks about each member job once."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.blender.addon_runner import Session
from tests.helpers import SAMPLE_SIZE, make_sample
from tests.integration.test_addon_ui import MAIN_LOOP
from tests.integration.test_group import two_clusters  # noqa: F401 - the fixture: presets tbfast and tbslow

FRAMES = 8

# Every status call the add-on makes (monitor.status_of_preset: the plain jobs' refresh and a group's look
# alike), by the job it asks about, for the refresh under way.
COUNT_STATUS_CALLS = """
import collections, time
from braas_hpc.core import monitor
asked = collections.Counter()
_status_of_preset = monitor.status_of_preset
async def _counted(preset, records, *args, **kwargs):
    asked.update(r.name for r in records)
    return await _status_of_preset(preset, records, *args, **kwargs)
monitor.status_of_preset = _counted
"""


def test_two_presets_and_submit_make_a_group_the_refresh_finishes(two_clusters: tuple[str, str],  # noqa: F811
                                                                  tmp_path: Path) -> None:
    fast, slow = two_clusters
    scene = make_sample(tmp_path / "scene")
    got = Session(tmp_path / "user").run(prelude=COUNT_STATUS_CALLS, script=f"""
        from braas_hpc.blender.addon import runtime
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        scene = bpy.context.scene
        scene.render.resolution_percentage, scene.cycles.samples = 10, 4  # tiny frames
        settings = scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames = {fast!r}, "CUSTOM", "1-{FRAMES}"
        settings.chunk, settings.max_parallel, settings.project = 1, 1, "panel group"
        bpy.ops.braas_hpc.also_on(preset={slow!r})
        result["submit"] = sorted(bpy.ops.braas_hpc.submit())
        result["message"] = runtime.state.message.text
        jobs = bpy.context.window_manager.braas_hpc.jobs
        result["rows"] = [(j.name, j.is_group, j.preset) for j in jobs]
        name = jobs[0].name
        per_refresh, seen_shares, moves = [], [], set()
        deadline = time.time() + 300
        while time.time() < deadline:
            asked.clear()
            bpy.ops.braas_hpc.refresh_jobs()
            per_refresh.append(dict(asked))
            job = jobs[name]
            seen_shares.append([(m.name, m.state, m.frames_done, m.frames_held) for m in job.members])
            moves.add(job.moves)
            if job.state in ("COMPLETED", "FAILED", "CANCELLED"):
                break
            time.sleep(2)
        job = jobs[name]
        result["ended"] = (job.state, job.frames_done, job.frames_total, job.missing)
        result["members"] = [(m.name, m.job, m.state, m.frames_done, m.frames_held) for m in job.members]
        result["rows_after"] = [j.name for j in jobs]
        result["per_refresh"], result["shares"], result["moves"] = per_refresh, seen_shares, sorted(moves)
        result["download"] = sorted(bpy.ops.braas_hpc.download_job(job=name))
        result["download_message"] = runtime.state.message.text
        try:
            bpy.ops.braas_hpc.resubmit_failed(job=name)
            result["resubmit"] = "accepted"
        except RuntimeError as error:
            result["resubmit"] = str(error)
        asked.clear()
        bpy.ops.braas_hpc.refresh_jobs()  # an ended group: shown as recorded, no cluster asked
        result["after_end"] = dict(asked)
        result["movie"] = sorted(bpy.ops.braas_hpc.make_video(job=name))
        result["video"] = jobs[name].video
        bpy.ops.braas_hpc.job_info(job=name)
        result["info"] = bpy.data.texts[0].as_string()
        from braas_hpc.core import registry
        result["remove"] = sorted(bpy.ops.braas_hpc.remove_job(job=name))
        result["left"] = ([j.name for j in jobs], registry.list_groups(), [r.name for r in registry.list_jobs()])

        settings.custom_frames, settings.project = "1-40", "cancelled group"
        bpy.ops.braas_hpc.submit()
        other = jobs[0].name
        result["cancel"] = sorted(bpy.ops.braas_hpc.cancel_job(job=other))
        bpy.ops.braas_hpc.refresh_jobs()
        result["cancelled"] = (jobs[other].state, jobs[other].pool, [m.state for m in jobs[other].members])
        result["moves_after_cancel"] = jobs[other].moves
        result["member_states"] = sorted(r.state for r in registry.list_jobs())
    """)
    assert got["submit"] == ["FINISHED"], got["message"]
    (row,) = got["rows"]  # one row: the member jobs are not rows of their own
    name = row[0]
    assert name.startswith("panel_group-") and row[1] is True and row[2] == f"{fast} + {slow}", got["rows"]
    assert got["message"].startswith(f"job {name} submitted over {fast}, {slow}"), got["message"]
    print(f"{len(got['per_refresh'])} refreshes; shares {got['shares'][-1]}; moves {got['moves']}")
    assert got["ended"] == ["COMPLETED", FRAMES, FRAMES, ""], got
    members = {m[0]: m for m in got["members"]}
    assert members[fast][1] == f"{name}.{fast}" and members[slow][1] == f"{name}.{slow}"
    assert members[fast][3] + members[slow][3] == FRAMES and all(m[4] == 0 for m in members.values()), members
    # Each cluster's share, as it ran: the slow one held frames at first (whether it kept them is the group's
    # choice: with 4 s per task there, the fast one may take them all away).
    assert members[fast][3] > members[slow][3], members
    assert any(dict((m[0], m[3]) for m in share)[slow] for share in got["shares"]), got["shares"]
    # Frames the first batches did not take were handed out by the refreshes (nothing else drove it).
    assert any(m for m in got["moves"]), got["moves"]
    assert any(share[0][3] + share[1][3] for share in got["shares"][:-1]), got["shares"]  # counts as it ran
    # Each refresh asked about each member once: the group's look, never the plain jobs' refresh too.
    member_jobs = {f"{name}.{fast}", f"{name}.{slow}"}
    assert got["per_refresh"] and all(asked == dict.fromkeys(member_jobs, 1) for asked in got["per_refresh"]), \
        got["per_refresh"]
    assert got["after_end"] == {}
    assert got["rows_after"] == [name]
    assert got["download"] == ["FINISHED"] and f"{FRAMES} new frame(s)" in got["download_message"], got
    folder = tmp_path / "user" / "home" / "braas-hpc" / name
    assert sorted(p.name for p in folder.glob("frame_*")) == [f"frame_{f:06d}.png" for f in range(1, FRAMES + 1)]
    for frame in folder.glob("frame_*"):
        with Image.open(frame) as image:
            assert image.format == "PNG" and image.size == (SAMPLE_SIZE[0] // 10, SAMPLE_SIZE[1] // 10)
    assert "Resubmit Missing Frames is for a job on one cluster" in got["resubmit"], got["resubmit"]
    summary = json.loads((folder / "summary.json").read_text())
    assert {c["preset"]: c["frames_rendered"] for c in summary["clusters"]} == {
        fast: members[fast][3], slow: members[slow][3]}, summary
    assert got["movie"] == ["FINISHED"] and got["video"] == str(folder / Path(got["video"]).name), got["video"]
    assert Path(got["video"]).stat().st_size > 1000
    info = got["info"]
    assert info.startswith(f"Job {name} over 2 clusters: COMPLETED, {FRAMES} of {FRAMES} frames"), info[:300]
    assert f"===== {fast} ({name}.{fast})" in info and f"===== {slow} ({name}.{slow})" in info, info
    assert got["remove"] == ["FINISHED"] and got["left"] == [[], [], []], got["left"]  # the group and its members
    # Cancel on a group's row: every member cancelled, nothing handed out any more.
    assert got["cancel"] == ["FINISHED"], got
    state, pool, member_states = got["cancelled"]
    assert state == "CANCELLED" and pool > 0 and got["moves_after_cancel"] == "", got["cancelled"]
    assert got["member_states"] == ["CANCELLED", "CANCELLED"], got["member_states"]


def test_the_follower_drives_a_group_without_stalling_blender(two_clusters: tuple[str, str],  # noqa: F811
                                                              tmp_path: Path) -> None:
    """The UI branch (test_addon_ui's main loop): Submit returns at once, and the jobs follower alone,
    on the add-on's loop, drives the group to its end and downloads its frames as they land ("Download
    frames as they land"); the main thread is never held up by it."""
    fast, slow = two_clusters
    scene = make_sample(tmp_path / "scene")
    got = Session(tmp_path / "user").run(prelude=MAIN_LOOP, script=f"""
        from braas_hpc.blender import jobs_list
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        prefs.auto_download = True
        scene = bpy.context.scene
        scene.render.resolution_percentage, scene.cycles.samples = 10, 4
        settings = scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames = {fast!r}, "CUSTOM", "1-{FRAMES}"
        settings.chunk, settings.max_parallel, settings.project = 1, 1, "followed group"
        bpy.ops.braas_hpc.also_on(preset={slow!r})
        pressed, following = [], set()

        def press():
            pressed.append(sorted(bpy.ops.braas_hpc.submit()))
            pressed.append(bool(runtime.state.bridge.active()))

        loop.register(press)
        jobs = bpy.context.window_manager.braas_hpc.jobs

        def ended():
            following.add(jobs_list.follower.describe())
            return bool(jobs) and jobs[0].state in ("COMPLETED", "FAILED", "CANCELLED")

        result["ended"] = loop.run_until(ended, 300)
        result["after_end"] = loop.run_until(lambda: not jobs_list.follower.running(), 60)
        result["press"] = pressed
        job = jobs[0]
        result["row"] = (job.name, job.state, job.frames_done, job.frames_total, len(jobs))
        result["message"] = runtime.state.message.text
        result["following"] = sorted(following)
        result["late_ms"] = max(loop.late_ms)
    """)
    print(f"slowest main-loop tick {got['late_ms']:.1f} ms")
    assert got["press"] == [["FINISHED"], True], got  # returned at once, the submission on the loop
    assert got["ended"] and got["after_end"], got
    name, state, done, total, rows = got["row"]
    assert (state, done, total, rows) == ("COMPLETED", FRAMES, FRAMES, 1), got
    assert "Following 1 active job(s)" in got["following"], got["following"]
    # The follower downloaded the frames as the group's looks saw them land.
    folder = tmp_path / "user" / "home" / "braas-hpc" / name
    assert sorted(p.name for p in folder.glob("frame_*")) == [f"frame_{f:06d}.png" for f in range(1, FRAMES + 1)]
    # Nothing of the submission, the looks or the downloads ran on the main thread (test_addon_ui's measure:
    # a full garbage collection of Blender's heap can take up to ~200 ms on this shared machine).
    assert got["late_ms"] < 1000, got["late_ms"]
