"""The jobs list follows its active jobs (braas_hpc/blender/jobs_list.Follower) in the add-on's UI branch,
in real bpy against the test cluster, with the main loop of tests/integration/test_addon_ui.py calling
the timers: frames and a job's end show in the list within seconds of the files on the cluster (the
cluster's job watcher streams them), with no more status polls than the panel's back-off makes; the
follower starts again when a job joins the active ones, and stops when none is left, when Blender goes
offline, and when the add-on is disabled."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest

from braas_hpc.blender.jobs_list import FIRST_INTERVAL_S, GROWTH
from braas_hpc.core import events
from tests.blender.addon_runner import Session
from tests.conftest import run_cli
from tests.helpers import eventually
from tests.integration.test_addon_ui import MAIN_LOOP

FRAMES = 16  # one task a frame, one at a time: frames land about a second apart, most after the first poll
MAX_INTERVAL_S = 60.0  # the panel's longest pause between polls
FRAME_LAG_S = 3.0  # the watcher looks twice a second, the timer ticks once a second when idle
END_LAG_S = 6.0  # the end's poll waits 1 s for the task's exit, and one too early is followed 4 s later

RECORDING = """
import time
from braas_hpc.blender import jobs_list
from braas_hpc.core import recovery
polls = []
real_poll = recovery.status_and_recover

async def counted(names=None):  # each is one scheduler query (the follower's and any refresh's)
    polls.append(time.time())
    return await real_poll(names)

recovery.status_and_recover = counted

def jobs():  # looked up each time: opening a file may give the window manager new properties
    return bpy.context.window_manager.braas_hpc.jobs

def submit(scene, frames, max_parallel=1):
    before = {job.name for job in jobs()}
    bpy.ops.wm.open_mainfile(filepath=scene)
    settings = bpy.context.scene.braas_hpc
    settings.preset, settings.frames_mode, settings.custom_frames = "testbed", "CUSTOM", frames
    settings.max_parallel = max_parallel
    assert sorted(bpy.ops.braas_hpc.submit()) == ["FINISHED"]  # the UI branch: returns at once
    assert loop.run_until(lambda: {job.name for job in jobs()} - before, 120), runtime.state.message.text
    (name,) = {job.name for job in jobs()} - before
    return name

def following():
    ops = runtime.state.bridge.active(jobs_list.FOLLOW)
    return sorted(jobs_list.follower.following) if len(ops) == 1 and jobs_list.follower.running() else None
"""


def _panel_back_off_polls(first: float, end: float) -> int:
    """How many polls the panel's back-off (5 s, then 1.6 times longer each, at most 60 s) makes from its
    first at `first` to see a job that ended at `end`: every poll due before the end, and one after it."""
    interval, due, count = FIRST_INTERVAL_S, first, 0
    while due < end:
        count, due, interval = count + 1, due + interval, min(interval * GROWTH, MAX_INTERVAL_S)
    return count + 1


def _slurm_end(remote, job_id: str) -> float:  # noqa: ANN001
    """When Slurm recorded the array's last task ending (whole seconds: never later than it was)."""
    ends = eventually(lambda: remote(f"sacct -X --noheader --parsable2 -o End -j {job_id}").stdout.split(),
                      lambda ends: len(ends) == FRAMES and all(e[:1].isdigit() for e in ends),
                      f"accounting to record every task of {job_id} ending")
    return max(datetime.datetime.fromisoformat(end).timestamp() for end in ends)


def _scene(sample_scene: Path, tmp_path: Path) -> Path:
    """A copy of the sample: Submit saves the settings it changes into the file."""
    folder = tmp_path / "scene"
    shutil.copytree(sample_scene.parent, folder)
    return folder / sample_scene.name


def _mtimes(folder: Path, pattern: str) -> list[float]:
    return sorted(path.stat().st_mtime for path in folder.glob(pattern))


def test_the_list_shows_frames_and_the_end_as_they_land(testbed, workdir: Path, remote, sample_scene: Path,  # noqa: ANN001
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(events.EVENTS_ENV, "on")  # the suite runs without (tests/conftest.py); Blender inherits it
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))  # a registry of its own: only its job listed
    got = Session(tmp_path / "user").run(prelude=MAIN_LOOP + RECORDING, script=f"""
        name = submit({str(_scene(sample_scene, tmp_path))!r}, "1-{FRAMES}")
        result["name"], result["ids"], result["submitted"] = name, jobs()[name].scheduler_ids, time.time()
        seen = []  # (when, frames done, state) at each change the list shows

        def ended():
            job = jobs()[name]
            if not seen or seen[-1][1:] != [job.frames_done, job.state]:
                seen.append([time.time(), job.frames_done, job.state])
            return job.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")

        result["ended"] = loop.run_until(ended, 300)
        result["seen"], result["polls"] = seen, list(polls)
        result["stopped"] = loop.run_until(lambda: not runtime.state.bridge.active(jobs_list.FOLLOW)
                                           and jobs_list.follower.operation is None, 10)
        result["message"] = runtime.state.message.text
    """)
    name = got["name"]
    try:
        assert got["ended"] and got["seen"][-1][1:] == [FRAMES, "COMPLETED"], got
        job_dir = workdir / f"braas-hpc-{testbed.user}" / "jobs" / name
        landed = _mtimes(job_dir / "out", "frame_*.png")
        markers = _mtimes(job_dir / "status", "task-*.json")
        assert len(landed) == FRAMES and len(markers) == FRAMES, (landed, markers)
        seen, polls = got["seen"], got["polls"]

        def shown(predicate) -> float:  # noqa: ANN001
            return next(when for when, done, state in seen if predicate(done, state))

        # Each frame that landed once the follower watched (after its first poll) showed within seconds,
        # most of them between polls: the watcher's news, not the back-off (5, 10, 18, 31 s after submit).
        watched = [(k, at) for k, at in enumerate(landed, 1) if at > polls[0] + 1.5]
        lags = [shown(lambda done, _state, k=k: done >= k) - at for k, at in watched]
        assert len(watched) >= FRAMES // 2 and max(lags) < FRAME_LAG_S, (lags, seen, polls)
        end_lag = shown(lambda _done, state: state == "COMPLETED") - markers[-1]
        assert end_lag < END_LAG_S, (end_lag, seen, polls)
        # No more polls than the panel's back-off makes for the same job, and none once it ended.
        assert polls[0] >= got["submitted"] + FIRST_INTERVAL_S - 0.5, polls
        allowed = _panel_back_off_polls(polls[0], _slurm_end(remote, got["ids"].split(", ")[0]))
        assert len(polls) <= allowed, (polls, allowed)
        assert got["stopped"], got["message"]
        print(f"frame lags {[round(lag, 2) for lag in lags]} s, end shown {end_lag:.2f} s after the last marker, "
              f"{len(polls)} polls (the panel's back-off: {allowed})")
    finally:
        run_cli("cancel", name)


def test_the_follower_restarts_when_jobs_change_and_stops_when_none_is_left(testbed, sample_scene: Path,  # noqa: ANN001
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))  # a registry of its own: only its jobs listed
    got: dict = {}
    scene = _scene(sample_scene, tmp_path)
    try:
        got = Session(tmp_path / "user").run(prelude=MAIN_LOOP + RECORDING, timeout=900, script=f"""
            import addon_utils
            steps = result["steps"] = []
            first = submit({str(scene)!r}, "1-60")
            result["names"] = [first]
            steps.append(["one", loop.run_until(lambda: following() == [first], 10), following()])
            operation = jobs_list.follower.operation
            second = submit({str(scene)!r}, "1-60")
            result["names"].append(second)
            both = sorted([first, second])
            steps.append(["two", loop.run_until(lambda: following() == both, 10), following(),
                          operation.cancelled])
            # Offline by the user's choice: no follower; online again: it starts again.
            operation = jobs_list.follower.operation
            bpy.context.preferences.system.use_online_access = False
            steps.append(["offline", bpy.app.online_access, loop.run_until(lambda: not runtime.state.bridge.active(
                jobs_list.FOLLOW), 10), operation.cancelled, jobs_list.follower.describe()])
            bpy.context.preferences.system.use_online_access = True
            steps.append(["online", loop.run_until(lambda: following() == both, 10), following()])
            # Both cancelled: once the list shows them ended, nothing is followed.
            for name in both:
                assert sorted(bpy.ops.braas_hpc.cancel_job(job=name)) == ["FINISHED"]
            ended = lambda: all(jobs()[name].state == "CANCELLED" for name in both)
            steps.append(["cancelled", loop.run_until(ended, 180), [jobs()[name].state for name in both]])
            steps.append(["none", loop.run_until(lambda: not runtime.state.bridge.active(jobs_list.FOLLOW)
                                                 and jobs_list.follower.operation is None, 5)])
            # A new job is followed; disabling the add-on stops its follower with the loop.
            third = submit({str(scene)!r}, "1-60")
            result["names"].append(third)
            steps.append(["three", loop.run_until(lambda: following() == [third], 10), following()])
            operation = jobs_list.follower.operation
            addon_utils.disable("braas_hpc", default_set=True)
            steps.append(["disabled", operation.cancelled, jobs_list.follower.operation is None,
                          runtime.state.bridge.running])
            result["message"] = runtime.state.message.text
        """)
    finally:
        for name in got.get("names", []):
            run_cli("cancel", name)
    steps = {step[0]: step[1:] for step in got["steps"]}
    first, second, third = got["names"]
    assert steps["one"] == [True, [first]], got
    assert steps["two"] == [True, sorted([first, second]), True], got  # the old one was stopped
    assert steps["offline"] == [False, True, True, "Not following the active jobs: Blender's online access is off"]
    assert steps["online"] == [True, sorted([first, second])], got
    assert steps["cancelled"] == [True, ["CANCELLED", "CANCELLED"]], got
    assert steps["none"] == [True], got
    assert steps["three"] == [True, [third]], got
    assert steps["disabled"] == [True, True, False], got
