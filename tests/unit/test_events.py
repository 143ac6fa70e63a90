"""The job watcher (cluster_scripts/job_watcher.py) on Python 3.6 over a real directory, and what the
client makes of its lines (core.events): hostile lines dropped, event-brought polls spaced."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

from braas_hpc.core import events, monitor, watch
from braas_hpc.core.events import Event, JobEvents, parse_event
from braas_hpc.core.jobs import JobSpec
from braas_hpc.core.registry import JobRecord
from braas_hpc.core.scripts import script_source

PY36 = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions" / "3.6.15" / "bin" / "python3"


def _watcher(python: str, request: dict) -> subprocess.Popen[str]:
    return subprocess.Popen([python, "-c", script_source(events.WATCHER), json.dumps(request)], stdout=subprocess.PIPE,
                            text=True)


def test_watcher_on_python_36_says_frames_markers_and_the_summary(tmp_path: Path) -> None:
    assert PY36.is_file(), "Python 3.6 (a login node's python3 on RHEL 8 / SLES 15) is missing: pyenv install 3.6.15"
    job = tmp_path / "jobs" / "j1"
    (job / "out").mkdir(parents=True)
    (job / "status").mkdir()
    (job / "out" / "frame_000001.png").write_bytes(b"x")  # there before: said in the first look
    proc = _watcher(str(PY36), {"jobs": {"j1": str(job)}, "interval": 0.1, "idle": 20})
    assert proc.stdout is not None
    lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
    assert lines == [{"e": "frame", "job": "j1", "name": "frame_000001.png", "size": 1}, {"e": "ready"}]
    (job / "out" / "frame_000002.png.tmp").write_bytes(b"partial")  # not a frame's name: never said
    (job / "out" / "frame_000003.png").write_bytes(b"")  # empty: not landed yet
    (job / "out" / "frame_000002.png").write_bytes(b"yz")
    os.symlink("/etc/passwd", job / "out" / "frame_000009.png")  # a link is not the job's frame
    assert json.loads(proc.stdout.readline()) == {"e": "frame", "job": "j1", "name": "frame_000002.png", "size": 2}
    (job / "status" / "r1-task-2.json").write_text('{"state": "done", "frames": [2]}')
    assert json.loads(proc.stdout.readline()) == {"e": "marker", "job": "j1", "task": "r1-task-2.json",
                                                  "state": "done"}
    (job / "summary.json").write_text("{}")
    assert [json.loads(line) for line in proc.stdout] == [{"e": "summary", "job": "j1"}, {"e": "bye", "why": "ended"}]
    assert proc.wait(10) == 0


def test_watcher_refuses_a_bad_request_and_ends_when_idle(tmp_path: Path) -> None:
    bad = _watcher(str(PY36), {"jobs": {"../x": "/tmp"}})
    assert bad.communicate(timeout=10)[0] == '{"e": "error", "why": "bad job \'../x\'"}\n' and bad.returncode == 2
    idle = _watcher(str(PY36), {"jobs": {"j": str(tmp_path)}, "interval": 0.1, "idle": 1})
    assert idle.communicate(timeout=10)[0].splitlines() == ['{"e": "ready"}', '{"e": "bye", "why": "idle"}']


def test_hostile_lines_are_dropped() -> None:
    jobs = {"j1"}
    good = '{"e": "frame", "job": "j1", "name": "frame_000001.png", "size": 5}'
    assert parse_event(good, jobs) == Event("frame", "j1", "frame_000001.png", 5)
    for line in ['{"e": "frame", "job": "other", "name": "frame_000001.png", "size": 5}',  # not asked about
                 '{"e": "frame", "job": "j1", "name": "../frame_000001.png", "size": 5}',
                 '{"e": "frame", "job": "j1", "name": "frame_1.png/../../x", "size": 5}',
                 '{"e": "frame", "job": "j1", "name": "frame_000001.png", "size": "5"}',
                 '{"e": "frame", "job": "j1", "name": "frame_000001.png", "size": true}',
                 '{"e": "frame", "job": "j1", "name": "frame_000001.png", "size": 0}',
                 '{"e": "frame", "job": ["j1"], "name": "frame_000001.png", "size": 5}',
                 '{"e": "marker", "job": "j1", "task": "task-1.json", "state": "Done; rm -rf"}',
                 '{"e": "marker", "job": "j1", "task": "status/task-1.json", "state": "done"}',
                 '{"e": "summary", "job": "j2"}', '[1, 2]', 'NaN', '{"e": 3}', "not json",
                 '{"e": "frame", "job": "j1", "name": "frame_000001.png", "size": 5, "pad": "' + "x" * 5000 + '"}']:
        assert parse_event(line, jobs) is None, line


def _record(name: str = "j1", tasks: int = 2, rounds: int = 0) -> JobRecord:
    spec = JobSpec(name=name, preset="p", scene="/s.blend", frames=(1, 2, 3, 4))
    ids = tuple(str(100 + r) for r in range(rounds + 1))
    return JobRecord(name, "p", spec, "/w", ids, "RUNNING", {}, rounds, 0.0, id_tasks={i: tasks for i in ids})


def test_an_end_is_said_by_the_summary_or_every_marker_of_the_latest_round() -> None:
    news = JobEvents()
    news.records["j1"] = _record(rounds=1)
    for name in ("task-1.json", "task-2.json", "r1-task-1.json"):  # round 0 ended; round 1 only half
        news._note(Event("marker", "j1", name, state="done"))
    assert not news.says_ended(Event("marker", "j1", "r1-task-1.json", state="done"))
    news._note(Event("marker", "j1", "r1-task-2.json", state="running"))
    assert not news.says_ended(Event("marker", "j1", "r1-task-2.json", state="running"))
    news._note(Event("marker", "j1", "r1-task-2.json", state="failed"))
    assert news.says_ended(Event("marker", "j1", "r1-task-2.json", state="failed"))
    assert news.says_ended(Event("summary", "j1"))


def test_event_brought_polls_are_spaced_whatever_the_watcher_says() -> None:
    """A watcher saying "ended" over and over brings polls no closer than 0.2, 0.4, 0.8 s (the gap in
    this test; 2, 4, 8 s by default), and frames alone never bring one."""
    async def run() -> list[tuple[float, bool]]:
        news = JobEvents(gap=0.2)
        news.polled()
        start = news.last_poll
        polls: list[tuple[float, bool]] = []

        async def flood() -> None:
            for i in range(60):
                news.queue.put_nowait(Event("summary", "j1") if i % 2 else Event("frame", "j1", f"frame_{i}.png", 1))
                await asyncio.sleep(0.03)

        feeder = asyncio.create_task(flood())
        while time.monotonic() - start < 1.8:
            poll, got = await news.until(start + 60)
            if poll:
                polls.append((time.monotonic() - start, True))
                news.polled()
            else:
                assert got and all(e.kind == "frame" for e in got)
        await feeder
        return polls

    polls = asyncio.run(run())
    times = [t for t, _ in polls]
    # 30 "ended" lines in 1.8 s bring polls at 0.2, 0.6, 1.4 and 3.0 s: never one per line
    assert 3 <= len(times) <= 4 and times[0] >= 0.19, times
    spacing = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap >= 0.95 * 0.2 * 2 ** (i + 1) for i, gap in enumerate(spacing)), times


def test_a_poll_brought_by_markers_lets_the_task_exit_first_and_a_summary_does_not_wait() -> None:
    """The last task's final marker is written just before the task exits: the poll it brings waits
    `settle` after it (the scheduler has not recorded the exit yet); the summary is written after the
    scheduler saw the array end: its poll comes as soon as the gap allows."""
    async def brought_after(ending: list[Event]) -> float:
        news = JobEvents(gap=0.05, settle=0.5)
        news.records["j1"] = _record()
        news.polled()
        await asyncio.sleep(0.1)  # the gap has passed: only the settling can hold the poll back
        start = time.monotonic()
        for event in ending:  # as the watcher's reader hands them on
            news._note(event)
            news.queue.put_nowait(event)
        poll, _ = await news.until(start + 30)
        assert poll
        return time.monotonic() - start

    markers = [Event("marker", "j1", f"task-{t}.json", state="done") for t in (1, 2)]
    assert 0.45 <= asyncio.run(brought_after(markers)) < 5
    assert asyncio.run(brought_after([Event("summary", "j1")])) < 0.3
    assert asyncio.run(brought_after([*markers, Event("summary", "j1")])) < 0.3


def test_frames_the_watcher_saw_are_shown_without_a_poll() -> None:
    news = JobEvents()
    news.records["j1"] = _record()
    news.frames["j1"] = {"frame_000002.png", "frame_000004.png"}
    report = monitor.StatusReport([monitor.JobStatus("j1", "p", "RUNNING", 1, 4, missing=(2, 3, 4))])
    (shown,) = watch.with_frames(report, news).statuses
    assert (shown.frames_done, shown.missing) == (3, (3,))


def test_watcher_lists_a_directory_again_only_when_it_changed(tmp_path: Path) -> None:
    """One stat a look for a still directory (thousands of frames on a parallel file system are not read
    twice a second); read again when a file is renamed into it, or while its time stamp is too recent."""
    from cluster_scripts import job_watcher

    job = job_watcher.Job("j", str(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    assert not job.unchanged(str(out))  # never looked at
    assert not job.unchanged(str(out))  # changed less than 2 s ago: its stamp may be too coarse to trust
    old = time.time() - 10
    os.utime(out, (old, old))
    assert not job.unchanged(str(out))  # its stamp moved
    assert job.unchanged(str(out))
    (tmp_path / "frame_000001.png.part").write_bytes(b"x")
    os.rename(tmp_path / "frame_000001.png.part", out / "frame_000001.png")
    assert not job.unchanged(str(out))
