"""The `local` preset's queue (braas_hpc/local_queue.py) with real processes: detached, one task at a
time in order, cancel stops a task's whole process group, a dead runner's task fails and the queue goes
on. Tasks here are small bash scripts that wait on files the test creates (no Blender needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING
from braas_hpc.core.schedulers.local import QUEUE_SCRIPT, LocalScheduler
from tests.helpers import eventually

# A task: records its start, waits for its gate file (when the test made one to hold it), ends.
TASK = """#!/bin/bash
#BRAAS-LOCAL --array=1-{tasks}
echo "start $BRAAS_JOB_ID ${{BRAAS_TASK_ID:--}} $$ $PPID" >> {log}
{body}
echo "end $BRAAS_JOB_ID ${{BRAAS_TASK_ID:--}}" >> {log}
exit {code}
"""
HOLD = 'while [ -e {gate} ]; do sleep 0.05; done'


def _until(condition: Callable[[], object], what: str, timeout: float = 120) -> object:
    """Wait for a condition the queue brings about in another process (tests.helpers.eventually)."""
    return eventually(condition, bool, what, timeout=timeout, every=0.05)


def queue(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(QUEUE_SCRIPT), str(directory), *args], capture_output=True,
                          text=True, timeout=60)


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.dir, self.log, self.tmp = tmp / "queue", tmp / "tasks.log", tmp
        self.count = 0

    def script(self, tasks: int = 1, hold: Path | None = None, code: int = 0, body: str = "") -> Path:
        self.count += 1
        path = self.tmp / f"job{self.count}.sh"
        text = TASK.format(tasks=tasks, log=self.log, code=code, body=body + (HOLD.format(gate=hold) if hold else ""))
        path.write_text(text if tasks else text.replace("#BRAAS-LOCAL --array=1-0\n", ""))
        return path

    def submit(self, script: Path, *options: str) -> str:
        done = queue(self.dir, "submit", *options, str(script))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def states(self, *ids: str) -> dict[tuple[str, str], str]:
        done = queue(self.dir, "query", *ids)
        assert done.returncode == 0, done.stderr
        return {(line["job"], line["task"]): line["state"] for line in map(json.loads, done.stdout.splitlines())}

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def ended(self, *ids: str) -> dict[tuple[str, str], str] | None:
        states = self.states(*ids)
        return states if states and set(states.values()) <= {COMPLETED, FAILED, CANCELLED} else None


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)


def test_submit_returns_while_the_array_runs_detached_one_task_at_a_time_in_order(bench: Bench) -> None:
    gate = bench.tmp / "gate"
    gate.touch()
    first = bench.submit(bench.script(tasks=3, hold=gate))
    second = bench.submit(bench.script(tasks=0), "--after", first)

    # The submission returned while task 1 still waits on the gate: it runs in a worker of its own.
    _until(lambda: bench.states(first)[(first, "1")] == RUNNING, "task 1 running")
    assert bench.states(first, second) == {(first, "1"): RUNNING, (first, "2"): PENDING, (first, "3"): PENDING,
                                          (second, ""): PENDING}
    gate.unlink()
    assert _until(lambda: bench.ended(first, second), "both jobs ended") == {
        (first, "1"): COMPLETED, (first, "2"): COMPLETED, (first, "3"): COMPLETED, (second, ""): COMPLETED}
    events = [tuple(line[:3]) for line in bench.lines()]  # a job without an array has no task id: "-"
    assert events == [(k, first, t) for t in "123" for k in ("start", "end")] + [("start", second, "-"),
                                                                                   ("end", second, "-")]


def test_a_failed_task_fails_alone_and_the_queue_goes_on(bench: Bench) -> None:
    failing = bench.submit(bench.script(tasks=2, code=3))
    after = bench.submit(bench.script(tasks=1))
    states = _until(lambda: bench.ended(failing, after), "both ended")
    assert states == {(failing, "1"): FAILED, (failing, "2"): FAILED, (after, "1"): COMPLETED}
    done = queue(bench.dir, "query", failing)
    assert {json.loads(line)["exit"] for line in done.stdout.splitlines()} == {"3"}


def test_cancel_stops_the_running_task_with_its_children_and_the_rest_never_start(bench: Bench) -> None:
    gate, child = bench.tmp / "gate", bench.tmp / "child.pid"
    gate.touch()
    job = bench.submit(bench.script(tasks=3, hold=gate, body=f"sleep 300 & echo $! > {child}\n"))
    _until(child.exists, "the task's child started")
    sleeper = int(_until(lambda: child.read_text().strip(), "the child's pid"))

    done = queue(bench.dir, "cancel", job)

    assert done.returncode == 0, done.stderr
    assert _until(lambda: bench.ended(job), "the job ended") == {(job, t): CANCELLED for t in "123"}
    _until(lambda: not _alive(sleeper), "the task's child stopped")  # the whole group, not only bash
    assert [line[0] for line in bench.lines()] == ["start"]  # task 1 never ended, 2 and 3 never started
    assert queue(bench.dir, "cancel", job).returncode == 0  # cancelling an ended job is no error


def test_cancel_of_one_task_leaves_the_others_to_run(bench: Bench) -> None:
    """ID.TASK (LocalScheduler.task_id): a group moved that task's frames to another cluster."""
    gate = bench.tmp / "gate"
    gate.touch()
    job = bench.submit(bench.script(tasks=3, hold=gate))
    _until(lambda: bench.states(job)[(job, "1")] == RUNNING, "task 1 running")

    done = queue(bench.dir, "cancel", LocalScheduler().task_id(job, 2))

    assert done.returncode == 0, done.stderr
    assert bench.states(job) == {(job, "1"): RUNNING, (job, "2"): CANCELLED, (job, "3"): PENDING}
    gate.unlink()
    assert _until(lambda: bench.ended(job), "the job ended") == {
        (job, "1"): COMPLETED, (job, "2"): CANCELLED, (job, "3"): COMPLETED}
    assert [tuple(line[:3]) for line in bench.lines() if line[0] == "start"] == [("start", job, "1"),
                                                                                ("start", job, "3")]


def test_a_runner_that_died_fails_its_task_and_the_next_command_resumes_the_queue(bench: Bench) -> None:
    gate = bench.tmp / "gate"
    gate.touch()
    held = bench.submit(bench.script(tasks=2, hold=gate))
    _until(lambda: bench.lines(), "task 1 started")
    _, _, _, task_pid, worker_pid = bench.lines()[0]
    # As a restart does: the runner and the task are gone at once, without a word.
    os.kill(int(worker_pid), signal.SIGKILL)
    os.killpg(int(task_pid), signal.SIGKILL)
    _until(lambda: not _alive(int(worker_pid)), "the runner gone")
    gate.unlink()

    states = _until(lambda: bench.ended(held), "the queue resumed and ended")  # each query settles it

    assert states == {(held, "1"): FAILED, (held, "2"): COMPLETED}
    assert "interrupted" in _raw(bench, held)["1"]


def test_submissions_at_once_each_run_once_and_never_two_tasks_together(bench: Bench) -> None:
    scripts = [bench.script(tasks=2, body="sleep 0.1\n") for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(bench.submit, scripts))
    assert sorted(ids, key=int) == [str(i) for i in range(1, 7)]
    _until(lambda: bench.ended(*ids), "every job ended")
    events = bench.lines()
    assert len(events) == 24
    for start, end in zip(events[0::2], events[1::2], strict=True):  # never two tasks at once
        assert start[0] == "start" and end[0] == "end" and start[1:3] == end[1:3]
    assert sorted((line[1], line[2]) for line in events[0::2]) == sorted((i, t) for i in ids for t in "12")


def test_bad_requests_are_refused_with_a_reason(bench: Bench) -> None:
    missing = queue(bench.dir, "submit", str(bench.tmp / "nosuch.sh"))
    assert missing.returncode == 2 and "no such script" in missing.stderr
    bad_id = queue(bench.dir, "query", "1;rm")
    assert bad_id.returncode == 2 and "not a job id" in bad_id.stderr
    assert queue(bench.dir, "submit", "--after", "x", str(bench.script())).returncode == 2
    assert queue(bench.dir, "frobnicate").returncode == 2
    assert bench.states("77") == {}  # an id the queue never had: no line, as a scheduler that forgot it
    assert oct(bench.dir.stat().st_mode & 0o777) == "0o700"


def test_the_scheduler_face_speaks_the_queue() -> None:
    local = scheduler_for("local")
    assert isinstance(local, LocalScheduler)
    argv = local.submit_argv("/j/job.sh", options=local.after_argv(["4", "5"]))
    assert argv[1:] == [str(QUEUE_SCRIPT), argv[2], "submit", "--after", "4,5", "/j/job.sh"]
    assert local.parse_query('{"job": "4", "task": "2", "state": "RUNNING"}\nnot json\n{"job": 4}\n') == [
        local.parse_query('{"job": "4", "task": "2", "state": "RUNNING"}')[0]]
    assert local.parse_query('{"job": "4", "task": "", "state": "WHAT"}')[0].state == "UNKNOWN"


def _raw(bench: Bench, job: str) -> dict[str, str]:
    done = queue(bench.dir, "query", job)
    return {item["task"]: item["raw"] for item in map(json.loads, done.stdout.splitlines())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) is no longer running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_every_scheduler_module_is_found_and_helpers_are_not() -> None:
    from braas_hpc.core.presets import scheduler_names
    from braas_hpc.core.schedulers import all_schedulers

    assert scheduler_names() == ("local", "pbs", "sge", "slurm")  # _qstat_json.py and base.py are helpers
    assert [s.name for s in all_schedulers()] == list(scheduler_names())


def test_jobs_ended_a_month_ago_leave_the_queue(bench: Bench) -> None:
    old, recent = bench.submit(bench.script()), bench.submit(bench.script())
    _until(lambda: bench.ended(old, recent), "both ended")
    month_ago = time.time() - 31 * 24 * 3600
    os.utime(bench.dir / "jobs" / f"{old}.json", (month_ago, month_ago))

    assert set(bench.states(old, recent)) == {(recent, "1")}  # any command tidies the queue
    assert sorted(p.name for p in (bench.dir / "jobs").glob("*.json")) == [f"{recent}.json"]
