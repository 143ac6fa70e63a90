"""What the dashboard page is given: a job's view from its parts, markers and downloaded frames, and the
interactive sessions from one batch's answers (pure functions, no network)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
from pathlib import Path

import pytest

from braas_hpc.core import batch
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.registry import JobRecord
from braas_hpc.core.transport import CommandResult
from braas_hpc.dashboard import refresher, sessions, snapshot
from braas_hpc_interactive.core.records import SessionRecord


def _record(frames: int = 4, image_format: str = "PNG") -> JobRecord:
    spec = JobSpec(name="job1", preset="karolina", scene="/scenes/shot.blend", frames=tuple(range(1, frames + 1)),
                   image_format=image_format, tasks=tuple((f,) for f in range(1, frames + 1)))
    return JobRecord("job1", "karolina", spec, "/w/braas-hpc-me", ("100",), "RUNNING", {}, 0, 1.0)


def test_a_job_spread_over_clusters_sums_its_parts_and_ends_only_when_all_have() -> None:
    parts = [snapshot.Part("karolina", "COMPLETED", 2, 2), snapshot.Part("lumi", "RUNNING", 1, 2)]
    view = snapshot.job_view(_record(), parts, (4,), snapshot.Extras(), {})
    assert view["state"] == "RUNNING" and view["frames_done"] == 3 and view["presets"] == ["karolina", "lumi"]
    assert [c["frames_done"] for c in view["clusters"]] == [2, 1]
    assert view["can"] == {"cancel": True, "resubmit": False, "download": True}
    assert snapshot.overall_state([snapshot.Part("a", "COMPLETED", 1, 1), snapshot.Part("b", "FAILED", 0, 1)]) == \
        "FAILED"
    assert snapshot.overall_state([snapshot.Part("a", "PENDING", 0, 1), snapshot.Part("b", "CANCELLED", 0, 1)]) == \
        "PENDING"
    assert snapshot.overall_state([snapshot.Part("a", "PENDING", 0, 1), snapshot.Part("b", "RUNNING", 0, 1)]) == \
        "RUNNING"


def test_unanswered_part_leaves_counts_unknown_and_ended_job_offers_resubmit() -> None:
    error = {"kind": "connection", "message": "refused"}
    view = snapshot.job_view(_record(), [snapshot.Part("karolina", "UNKNOWN", None, 4, error)], None,
                             snapshot.Extras(), {})
    assert view["frames_done"] is None and not any(f["rendered"] for f in view["frames"])
    assert view["can"]["download"] is False
    ended = snapshot.job_view(_record(), [snapshot.Part("karolina", "FAILED", 3, 4)], (2,), snapshot.Extras(), {})
    assert ended["can"] == {"cancel": False, "resubmit": True, "download": True} and ended["missing"] == "2"


def test_downloaded_frames_fill_the_grid_and_the_newest_is_the_large_one(tmp_path: Path) -> None:
    for frame, stamp in ((1, 10), (3, 30), (2, 20)):
        path = tmp_path / f"frame_{frame:06d}.png"
        path.write_bytes(b"png")
        os.utime(path, ns=(stamp * 10**9, stamp * 10**9))
    (tmp_path / "notes.txt").write_text("not a frame")
    os.symlink(tmp_path / "frame_000001.png", tmp_path / "frame_000004.png")  # a link is never shown
    here = snapshot.local_frames(tmp_path)
    assert sorted(here) == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    view = snapshot.job_view(_record(), [snapshot.Part("karolina", "RUNNING", 3, 4)], (4,), snapshot.Extras(), here)
    assert view["latest"] == f"/frames/job1/frame_000003.png?v={30 * 10**9}"
    assert [bool(f["image"]) for f in view["frames"]] == [True, True, True, False]
    exr = snapshot.job_view(_record(image_format="OPEN_EXR"), [snapshot.Part("karolina", "RUNNING", 0, 4)], None,
                            snapshot.Extras(), {"frame_000001.exr": 1})
    assert exr["latest"] is None and exr["frames"][0]["here"] and not exr["frames"][0]["image"]  # a placeholder


def test_seconds_per_frame_come_from_every_rounds_markers() -> None:
    markers = [{"timings": {"1": 2.5, "2": 3.0}, "node": "cn1"}, {"timings": {"4": 1.25}, "node": "cn2"},
               {"timings": {"x": 9.0}, "node": ""}]
    assert snapshot.timings_of(markers) == ({1: 2.5, 2: 3.0, 4: 1.25}, ("cn1", "cn2"))


def _session(name: str, job_id: str) -> SessionRecord:
    return SessionRecord(name, "testbed", "slurm", job_id, "/w/braas-hpc-me", 10, False, 1.0)


def test_sessions_are_read_from_one_batch() -> None:
    running, waiting = _session("i-20260101-120000-ab12", "201"), _session("i-20260101-120100-cd34", "202")
    steps = sessions.steps_for("slurm", [running, waiting])
    assert {s.tag for s in steps} == {"sessions_query", "sessions_files", "sessions_live"}
    files = (f"{running.paths.dir}\0cn7\n\0\1\0" + "4242\n\0" + '{"host": "cn7", "port": 50123, "token": "' + "a" * 32
             + '"}\0' + f"{waiting.paths.dir}\0\0\1\0\0\0")
    answers = batch.Answers({
        "sessions_files": CommandResult((), 0, files, ""),
        "sessions_live": CommandResult((), 0, "201|RUNNING|\n202|PENDING|\n", ""),
        "sessions_query": CommandResult((), 0, "", ""),
    })
    shown = {v["session"]: v for v in sessions.views("slurm", [running, waiting], answers)}
    assert {k: shown[running.name][k] for k in ("state", "node", "command", "port")} == \
        {"state": "RUNNING", "node": "cn7", "command": "running", "port": 50123}
    assert shown[waiting.name]["state"] == "PENDING" and shown[waiting.name]["node"] == ""
    assert shown[waiting.name]["command"] == "none" and shown[waiting.name]["port"] is None


def test_the_refresher_asks_nothing_it_need_not(user_dirs: dict[str, str], tmp_path: Path) -> None:
    """Nothing before a page listens; then sessions on two clusters whose presets are gone are asked
    about once (waiting does not bring a preset back), and their being listed in another order than they
    were started is no change of the job list that would call for a refresh."""
    import asyncio

    from braas_hpc.dashboard.refresher import Refresher
    from braas_hpc_interactive.core.records import save_record

    for i, preset in enumerate(("gone-a", "gone-b", "gone-a")):
        save_record(SessionRecord(f"i-20260101-12000{i}-ab1{i}", preset, "slurm", str(300 + i), "/w", 10, False,
                                  float(i)))

    async def run() -> tuple[int, int, list[str]]:
        refresher = Refresher(tmp_path, poll_max_s=30)
        task = asyncio.create_task(refresher.run())
        await asyncio.sleep(1.5)
        before = refresher.polls
        updates = refresher.updates()
        first = await anext(updates)
        await asyncio.sleep(4.5)
        polls = refresher.polls
        await updates.aclose()
        task.cancel()
        return before, polls, [s["error"] for s in first["sessions"]]

    before, polls, errors = asyncio.run(run())
    assert before == 0
    assert polls == 1, f"{polls} refreshes in 4.5 s"
    assert len(errors) == 3 and all("gone-" in e for e in errors)


def test_the_status_preview_is_the_large_picture_until_a_frame_is_downloaded(tmp_path: Path) -> None:
    preview = tmp_path / "frame_2.jpg"
    preview.write_bytes(b"jpeg")
    running = [snapshot.Part("karolina", "RUNNING", 2, 4)]
    tasks = ({"task": "task-3", "frame": 3, "percent": 40.0},)
    view = snapshot.job_view(_record(), running, (3, 4), snapshot.Extras(), {}, str(preview), tasks)
    assert view["latest"].startswith("/previews/job1?v=") and view["latest_is_preview"] and view["tasks"] == [tasks[0]]
    here = {"frame_000001.png": 5}
    view = snapshot.job_view(_record(), running, (3, 4), snapshot.Extras(), here, str(preview))
    assert view["latest"] == "/frames/job1/frame_000001.png?v=5" and not view["latest_is_preview"]
    gone = snapshot.job_view(_record(), running, (3, 4), snapshot.Extras(), {}, str(tmp_path / "missing.jpg"))
    assert gone["latest"] is None


def test_a_group_is_one_entry_with_a_bar_per_cluster_and_no_resubmit(tmp_path: Path) -> None:
    from braas_hpc.core.fanout import Pace
    from braas_hpc.core.group import GroupStatus, MemberStatus

    spec = JobSpec(name="film.karolina", preset="karolina", scene="/scenes/shot.blend", frames=(1, 2, 3),
                   image_format="PNG", tasks=((1,), (2,), (3,)), group="film")
    record = JobRecord("film.karolina", "karolina", spec, "/w/braas-hpc-me", ("100",), "RUNNING", {}, 0, 5.0)
    status = GroupStatus("film", "RUNNING", 2, 6, (
        MemberStatus("karolina", "film.karolina", "RUNNING", 2, 1, Pace(3.25, 1, 40.0)),
        MemberStatus("lumi", "film.lumi", "UNREACHABLE", 0, 2, Pace())), pool=1, moves=())
    film = {1: ("rendered", "karolina"), 2: ("rendered", "karolina"), 3: ("held", "karolina"),
            4: ("held", "lumi"), 5: ("held", "lumi"), 6: ("pool", "")}
    members = [snapshot.MemberView("karolina", record, None, snapshot.Extras({1: 3.0, 2: 3.5}, ("n1",),
                                                                             {"task-1.log": "a\nb\n"})),
               snapshot.MemberView("lumi", None, None, snapshot.Extras(), "connection refused")]
    (tmp_path / "frame_000002.png").write_bytes(b"png")
    view = snapshot.group_view(status, film, members, snapshot.local_frames(tmp_path), ["12:00:00 lumi got frames 4-5"])
    assert view["group"] is True and view["frames_done"] == 2 and view["frames_total"] == 6 and view["pool"] == 1
    assert [(c["preset"], c["frames_done"], c["frames_held"], c["error"]) for c in view["clusters"]] == \
        [("karolina", 2, 1, None), ("lumi", 0, 2, "connection refused")]
    assert view["clusters"][0]["seconds_per_frame"] == 3.25 and view["clusters"][0]["queue_seconds"] == 40.0
    assert [(f["frame"], f["rendered"], f["where"]) for f in view["frames"]][2:] == \
        [(3, False, "held"), (4, False, "held"), (5, False, "held"), (6, False, "pool")]
    assert view["latest"].startswith("/frames/film/frame_000002.png")  # the group's one folder
    assert view["logs"] == {"karolina: task-1.log": "a\nb"} and view["timings"] == [[1, 3.0], [2, 3.5]]
    assert view["can"] == {"cancel": True, "resubmit": False, "download": True}
    assert view["moves"] == ["12:00:00 lumi got frames 4-5"] and view["scene"] == "shot.blend"
    ended = snapshot.group_view(dataclasses.replace(status, state="COMPLETED"), film, members, {}, [])
    assert ended["can"]["cancel"] is False and ended["can"]["resubmit"] is False


def test_while_a_group_runs_the_refreshes_back_off_no_further_than_its_looks(user_dirs: dict[str, str],
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The page drives a group as `braas-hpc wait GROUP` does: the back-off stops at group.POLL_S (here
    shortened with the shortest pause, so the test takes seconds)."""
    import asyncio
    import time

    from braas_hpc.core import group, watch
    from braas_hpc.core.fanout import Pace
    from braas_hpc.dashboard.refresher import Refresher

    monkeypatch.setattr(watch, "POLL_MIN_S", 0.25)
    monkeypatch.setattr(group, "POLL_S", 1.0)
    running = group.GroupStatus("film", "RUNNING", 0, 4, (group.MemberStatus("a", "film.a", "RUNNING", 0, 4, Pace()),),
                                pool=0)

    async def run() -> list[float]:
        refresher = Refresher(tmp_path, poll_max_s=30)
        times: list[float] = []

        async def refresh() -> None:
            times.append(time.monotonic())
            refresher._groups = {"film": running}  # noqa: SLF001 - what a look at a running group leaves

        refresher.refresh = refresh  # type: ignore[method-assign]
        refresher._watched.set()  # noqa: SLF001 - a page listens
        task = asyncio.create_task(refresher.run())
        await asyncio.sleep(4.6)
        task.cancel()
        return times

    times = asyncio.run(run())
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 0.25, 0.5, 1, then 1 again (the back-off alone would wait 2)
    assert len(gaps) >= 4 and gaps[1] < 0.8 and all(0.85 <= g <= 1.4 for g in gaps[2:]), gaps


def _blender_frame(frame: int, task: int, steps: int = 40) -> list[str]:
    """What a task's log holds for one frame: Blender's status line per step, our sample counts among them."""
    lines = [f"Fra:{frame} Mem:8.37M | Time:00:00.05 | Scene, ViewLayer | Updating step {s}" for s in range(steps)]
    lines.insert(steps // 2, f"BRAAS-SAMPLES task={task} frame={frame} Sample 4/8")
    return lines + [f"Fra:{frame} Mem:8.37M | Time:00:00.09 | Scene, ViewLayer | Sample 8/8",
                    f"BRAAS-PROGRESS task={task} frame={frame} done=1 total=1 seconds=0.10 status=rendered"]


def test_the_log_tails_fold_blenders_status_lines_to_the_last_of_each_run(tmp_path: Path) -> None:
    """The page's log tails (read on the cluster, in the status call): the newest logs first; a run of
    Blender's per-step status lines is its last line, so the frames' ends and errors are what is shown."""
    paths = JobPaths(str(tmp_path), "job1")
    logs = Path(paths.log_dir)
    logs.mkdir(parents=True)
    done = ["Blender 4.5.4 LTS (bpy module)", "braas-hpc: device CPU"]
    for frame in (1, 2, 3):
        done += _blender_frame(frame, 1)
    done.insert(50, "Error: Cannot read image 'wood.png'")
    (logs / "task-1.log").write_text("\n".join(done) + "\n")
    running = ["Blender 4.5.4 LTS (bpy module)", *_blender_frame(4, 2)[:30]]
    (logs / "task-2.log").write_text("\n".join(running))  # being written: no end of line yet
    os.utime(logs / "task-1.log", (1_000, 1_000))
    (logs / "notes.txt").write_text("not a log\n")

    argv = refresher._tails_step("l0", paths).argv
    answer = subprocess.run(argv, capture_output=True, text=True, check=True)
    tails = refresher._tails(answer.stdout)

    assert list(tails) == ["task-2.log", "task-1.log"]  # newest first, logs only
    assert tails["task-2.log"].splitlines() == [running[0], running[-1]]
    shown = tails["task-1.log"].splitlines()
    assert shown[:2] == done[:2] and "Error: Cannot read image 'wood.png'" in shown
    assert [line for line in shown if line.startswith("BRAAS-PROGRESS")] == [
        f"BRAAS-PROGRESS task=1 frame={f} done=1 total=1 seconds=0.10 status=rendered" for f in (1, 2, 3)]
    assert all(not (a.startswith("Fra:") and b.startswith("Fra:")) for a, b in itertools.pairwise(shown))
    assert shown[-2].endswith("Sample 8/8") and len(shown) <= snapshot.LOG_LINES
