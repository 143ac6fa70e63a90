"""State decisions from replayed scheduler answers: batched queries, fallbacks, time-outs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from braas_hpc.core.jobs import frame_file_name
from braas_hpc.core.monitor import Answers, _batch_steps, _decide, _ended_by_markers, _query, _states_from_markers
from braas_hpc.core.registry import JobRecord
from braas_hpc.core.schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, UNKNOWN, TaskState
from braas_hpc.core.schedulers.slurm import SlurmScheduler, state_of
from braas_hpc.core.transport.base import CommandResult
from braas_hpc.core.transport.local import LocalTransport
from tests.unit.test_slurm import SPEC


class Replay:
    """Answers commands from a script of captured outputs, and records what was asked.

    Only the transport's `run` is replayed: the parsing and decisions under test are the real ones.
    """

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    async def run(self, argv: Sequence[str], *, check: bool = True, **_: object) -> CommandResult:
        # A command run through a scheduler's small script (`sh -c SCRIPT sh COMMAND...`) answers as COMMAND.
        command = list(argv[4:]) if list(argv[:2]) == ["sh", "-c"] and argv[4:] else list(argv)
        self.asked.append(command)
        status, out, err = self.answers[command[0]]
        return CommandResult(tuple(argv), status, out, err)


def _record(name: str, ids: tuple[str, ...], state: str = PENDING) -> JobRecord:
    return JobRecord(name, "site", SPEC, "/w/braas-hpc", ids, state, {}, 0, 0.0)


def _ask(replay: Replay, records: list[JobRecord]) -> dict[str, list[str]]:
    got = asyncio.run(_query(replay, "slurm", records))  # type: ignore[arg-type]
    return {job_id: [s.state for s in states] for job_id, states in got.by_id.items()}


# Captured from the testbed (Slurm 22.05): a mix of array tasks, a cancelled pending array and a plain job.
SACCT = """41_1|COMPLETED|0:0
41_2|RUNNING|0:0
42_[1-4]|CANCELLED by 1001|0:0
43|FAILED|1:0
"""


def test_one_call_for_all_jobs() -> None:
    replay = Replay({"sacct": (0, SACCT, "")})
    records = [_record("a", ("41",)), _record("b", ("42",)), _record("c", ("43",)), _record("d", ("44",), COMPLETED)]
    got = _ask(replay, records)
    assert len(replay.asked) == 1 and replay.asked[0][-1] == "41,42,43"  # finished jobs are not asked about
    assert got == {"41": [COMPLETED, RUNNING], "42": [CANCELLED], "43": [FAILED]}


def test_accounting_disabled_falls_back_to_squeue() -> None:
    replay = Replay({
        "sacct": (1, "", "Slurm accounting storage is disabled\n"),
        "squeue": (0, "41_2|RUNNING|None\n41_3|PENDING|Resources\n", ""),
    })
    got = _ask(replay, [_record("a", ("41",))])
    assert [a[0] for a in replay.asked] == ["sacct", "squeue"]
    assert got == {"41": [RUNNING, PENDING]}


def test_controller_time_out_is_unknown_not_failed() -> None:
    timeout = (1, "", "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection\n")
    replay = Replay({"sacct": timeout, "squeue": (1, "", "slurm_load_jobs error: Socket timed out on send/recv\n")})
    assert _ask(replay, [_record("a", ("41",))]) == {"41": []}  # no states: the monitor says UNKNOWN


def test_truncated_and_odd_states() -> None:
    assert state_of("CANCELLED+") == CANCELLED
    assert state_of("CANCELLED by 1000") == CANCELLED
    assert state_of("") == UNKNOWN and state_of("WEIRD") == UNKNOWN
    assert [s.state for s in SlurmScheduler().parse_query("\n\n7|OUT_OF_MEMORY|0:125\n8|NODE_FAIL|1:0\n")] == [
        FAILED, FAILED]


def _marker(path: Path, state: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": 1, "state": state}, indent=1))  # as render_task.py writes it


def test_markers_tell_an_ended_job_when_the_queue_forgot_it(tmp_path: Path) -> None:
    """The real marker script, run by a real shell (the local transport)."""
    root = tmp_path / "braas-hpc"
    job = root / "jobs" / "j1"
    (job / "status").mkdir(parents=True)
    (job / "frames.txt").write_text("1,2\n3\n")
    record = JobRecord("j1", "site", SPEC, str(root), ("41",), PENDING, {}, 0, 0.0)
    ended = lambda: asyncio.run(_ended_by_markers(LocalTransport(), [record]))  # noqa: E731

    _marker(job / "status" / "task-1.json", "done")
    assert ended() == set()  # task 2 never started: no marker
    _marker(job / "status" / "task-2.json", "running")
    assert ended() == set()  # still running (or killed before it could say so)
    _marker(job / "status" / "task-2.json", "failed")
    assert ended() == {"j1"}
    (job / "out").mkdir()
    (job / "out" / "frame_000001.png").write_bytes(b"png")
    relisted: dict[str, set[str]] = {}  # the frames, listed in the same call after the markers
    assert asyncio.run(_ended_by_markers(LocalTransport(), [record], None, relisted)) == {"j1"}
    assert relisted == {"j1": {"frame_000001.png"}}

    # A resubmission's round has its own frames file and markers.
    (job / "frames-r1.txt").write_text("2\n")
    again = dataclasses.replace(record, rounds=1)
    assert asyncio.run(_ended_by_markers(LocalTransport(), [again])) == set()
    _marker(job / "status" / "r1-task-1.json", "done")
    assert asyncio.run(_ended_by_markers(LocalTransport(), [again])) == {"j1"}


def test_partial_accounting_is_not_the_whole_array() -> None:
    # Seen when slurmdbd lags behind a busy controller: task 2 (the array's own record) has finished and
    # is in the accounting; task 1 is still rendering and not recorded yet. Taking this answer as the
    # whole array ended the job as FAILED with a frame still on its way.
    from braas_hpc.core.monitor import answer_is_whole

    parse = SlurmScheduler().parse_query
    assert not answer_is_whole(parse("8_2|COMPLETED|0:0\n"), 2)
    assert answer_is_whole(parse("8_2|COMPLETED|0:0\n8_1|COMPLETED|0:0\n"), 2)
    assert answer_is_whole(parse("8_2|COMPLETED|0:0\n8_1|RUNNING|0:0\n"), 2)  # live: decided by the state
    assert answer_is_whole(parse("8|PENDING|0:0\n"), 2)  # the array's record before its tasks are split
    # Tasks cancelled before they started are one line with their range (throttle suffix included).
    assert answer_is_whole(parse("42_1|CANCELLED by 1001|0:0\n42_[2-4%2]|CANCELLED by 1001|0:0\n"), 4)
    assert answer_is_whole(parse("42_[1,2-4]|CANCELLED by 1001|0:0\n"), 4)
    assert not answer_is_whole(parse("42_[2-4]|CANCELLED by 1001|0:0\n"), 4)
    assert not answer_is_whole(parse("42_x|COMPLETED|0:0\n"), 2)  # an index we cannot read covers nothing
    assert answer_is_whole(parse("43|FAILED|1:0\n"), 1) and answer_is_whole(parse("43|FAILED|1:0\n"), 0)
    assert not answer_is_whole([], 1)


def test_the_queue_completes_a_partial_accounting_answer() -> None:
    record = dataclasses.replace(_record("a", ("8",)), id_tasks={"8": 2})
    partial = (0, "8_2|COMPLETED|0:0\n", "")

    # Task 1 is rendering but not in the accounting yet: the queue has it.
    replay = Replay({"sacct": partial, "squeue": (0, "8_1|RUNNING|None\n", "")})
    got = asyncio.run(_query(replay, "slurm", [record]))  # type: ignore[arg-type]
    assert [a[0] for a in replay.asked] == ["sacct", "squeue"] and replay.asked[1][-1] == "8"
    assert sorted((s.task, s.state) for s in got.by_id["8"]) == [("1", RUNNING), ("2", COMPLETED)]
    assert got.whole == {"8"}

    # Task 1 was cancelled before it started (the accounting never records it) and the queue is empty:
    # the array has ended, and its missing frames decide the rest.
    for empty in ((0, "", ""), (1, "", "slurm_load_jobs error: Invalid job id specified\n")):
        got = asyncio.run(_query(Replay({"sacct": partial, "squeue": empty}), "slurm", [record]))  # type: ignore[arg-type]
        assert [s.state for s in got.by_id["8"]] == [COMPLETED] and got.whole == {"8"}

    # The queue does not answer: the job stays open (UNKNOWN), never taken as ended.
    lost = (1, "", "slurm_load_jobs error: Socket timed out on send/recv\n")
    got = asyncio.run(_query(Replay({"sacct": partial, "squeue": lost}), "slurm", [record]))  # type: ignore[arg-type]
    assert got.whole == set()

    # A whole answer needs no second call.
    replay = Replay({"sacct": (0, "8_2|COMPLETED|0:0\n8_1|COMPLETED|0:0\n", "")})
    assert asyncio.run(_query(replay, "slurm", [record])).whole == {"8"} and len(replay.asked) == 1  # type: ignore[arg-type]


def test_the_queue_answers_for_a_job_the_accounting_does_not_know_yet() -> None:
    # Just submitted (slurmdbd lags) or queued where it cannot start yet: sacct says nothing, the
    # controller has it. The user sees PENDING, not UNKNOWN.
    record = dataclasses.replace(_record("a", ("8",)), id_tasks={"8": 2})
    replay = Replay({"sacct": (0, "", ""), "squeue": (0, "8_[1-2]|PENDING|PartitionDown\n", "")})
    got = asyncio.run(_query(replay, "slurm", [record]))  # type: ignore[arg-type]
    assert [a[0] for a in replay.asked] == ["sacct", "squeue"] and got.whole == {"8"}
    assert [(s.task, s.state) for s in got.by_id["8"]] == [("[1-2]", PENDING)]


def test_an_array_line_without_its_index_stands_for_no_task() -> None:
    # Captured from the testbed: task 3 of a throttled 3-task array cancelled before task 1 started.
    # The accounting then kept task 2 (run under the array's own id) as "8", and task 1 not at all.
    from braas_hpc.core.monitor import answer_is_whole, uncovered_tasks

    unplaced = SlurmScheduler().parse_query("8|COMPLETED|0:0\n")
    assert uncovered_tasks(unplaced, 3) == {1, 2, 3} and not answer_is_whole(unplaced, 3)
    assert uncovered_tasks(unplaced, 1) == set() and answer_is_whole(unplaced, 1)  # a plain job: the whole job
    record = dataclasses.replace(_record("a", ("8",)), id_tasks={"8": 3})
    replay = Replay({"sacct": (0, "8|COMPLETED|0:0\n", ""), "squeue": (0, "", "")})
    got = asyncio.run(_query(replay, "slurm", [record]))  # type: ignore[arg-type]
    # The queue has nothing left: the array has ended, and its markers will count the tasks.
    assert [a[0] for a in replay.asked] == ["sacct", "squeue"] and got.whole == {"8"}


def test_tasks_no_answer_lists_are_counted_by_their_markers(tmp_path: Path) -> None:
    """Arrays ending with tasks no answer lists: slurmdbd had not recorded a finished task yet (CI saw
    {COMPLETED: 1} for three finished tasks), or a task was cancelled while pending (never recorded).
    The real marker script, run by a real shell."""
    root = tmp_path / "braas-hpc"
    status = root / "jobs" / "j1" / "status"
    status.mkdir(parents=True)
    marker = lambda name, **fields: (status / name).write_text(json.dumps(fields, indent=1))  # noqa: E731
    marker("task-1.json", task=1, frames=[1, 2], state="done")
    marker("task-2.json", task=2, frames=[3, 4], state="running")  # frames on disk, last word not yet written
    marker("task-4.json", task=4, frames=[7, 8], state="running")  # killed: frame 8 is missing
    marker("r1-task-1.json", task=1, frames=[8], state="failed")
    (status / "r1-task-2.json").write_text('{"task": 2, "fra')  # caught while being rewritten
    spec = dataclasses.replace(SPEC, frames=tuple(range(1, 9)), tasks=((1, 2), (3, 4), (5, 6), (7, 8)))
    out = root / "jobs" / "j1" / "out"
    out.mkdir()
    on_disk = {frame_file_name(f, spec.extension) for f in range(1, 8)}  # frame 8 missing
    for name in on_disk:
        (out / name).write_bytes(b"png")
    record = dataclasses.replace(JobRecord("j1", "site", spec, str(root), ("8", "9"), FAILED, {}, 1, 0.0),
                                 id_tasks={"8": 4, "9": 2})
    got, listed = asyncio.run(_states_from_markers(LocalTransport(), record, {"8": {1, 2, 3, 4}, "9": {1, 2}}))
    assert [(s.job_id, s.task, s.state) for s in got] == [
        ("8", "1", COMPLETED), ("8", "2", COMPLETED), ("8", "3", CANCELLED), ("8", "4", FAILED),
        ("9", "1", FAILED), ("9", "2", FAILED)]
    assert got[2].raw == "never started (no marker)" and got[1].raw == "its frames are on disk"
    assert listed == on_disk  # listed in the same call, after the markers
    assert asyncio.run(_states_from_markers(LocalTransport(), record, {})) == ([], set())


def test_frames_are_listed_after_every_answer_that_can_say_a_task_ended() -> None:
    """In the status batch the queue and the markers come before the frames listing: a task renames its
    last frame into place before it ends, so a listing made after them holds what they say ended."""
    tags = [step.tag for step in _batch_steps("slurm", [_record("a", ("41",))])]
    assert tags.index("frames") > max(tags.index("query"), tags.index("live"), tags.index("markers")), tags


def test_a_task_that_ends_between_the_listing_and_its_marker_is_not_failed(tmp_path: Path) -> None:
    """Seen in CI: the batch listed the frames while task 1 wrote its last one; the queue, asked after
    that, no longer had the task; its marker, read next, said done. The status then said FAILED, frame 2
    missing, for a job whose every frame was on disk. The frames read with the markers decide."""
    root = tmp_path / "braas-hpc"
    job = root / "jobs" / "j1"
    (job / "status").mkdir(parents=True)
    (job / "out").mkdir()
    (job / "status" / "task-1.json").write_text(json.dumps({"task": 1, "frames": [1, 2], "state": "done"}))
    for frame in (1, 2, 3):
        (job / "out" / frame_file_name(frame, SPEC.extension)).write_bytes(b"png")
    record = dataclasses.replace(JobRecord("j1", "site", SPEC, str(root), ("41",), RUNNING, {}, 0, 0.0),
                                 id_tasks={"41": 2})
    answers = Answers({"41": [TaskState("41", "2", COMPLETED, "COMPLETED")]}, {"41"})  # task 1: the queue forgot it
    stale = {frame_file_name(f, SPEC.extension) for f in (1, 3)}  # listed before frame 2 was renamed into place
    state, tasks, missing, present = asyncio.run(_decide(LocalTransport(), record, answers, stale))
    assert (state, missing, tasks) == (COMPLETED, [], {COMPLETED: 2}), (state, missing, tasks)
    assert present == stale | {frame_file_name(2, SPEC.extension)}


def _pauses_of_watch(monkeypatch, polls: int, poll_max_s: float | None, **pace: float) -> list[float]:  # noqa: ANN001
    """The pauses `watch` takes between `polls` answers (the last one ends the job); the answers come
    from a stand-in for the cluster query, the back-off under test is the real one."""
    from braas_hpc.core import monitor, recovery, watch

    answers = iter([RUNNING] * (polls - 1) + [COMPLETED])
    pauses: list[float] = []

    async def answer(names):  # noqa: ANN001, ANN202
        state = next(answers)
        return monitor.StatusReport([monitor.JobStatus("j", "site", state, 0, 1, {}, (), ())]), []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(recovery, "status_and_recover", answer)
    monkeypatch.setattr(watch.asyncio, "sleep", pause)

    async def run() -> None:
        async for _ in watch.watch(["j"], poll_max_s, **pace):
            pass

    asyncio.run(run())
    return pauses


def test_watch_backs_off_to_30_s_by_default(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("BRAAS_HPC_POLL_MAX", raising=False)
    assert _pauses_of_watch(monkeypatch, 8, None) == [2, 4, 8, 16, 30, 30, 30]


def test_watch_poll_max_from_the_caller_or_the_environment(monkeypatch) -> None:  # noqa: ANN001
    assert _pauses_of_watch(monkeypatch, 5, 5) == [2, 4, 5, 5]
    monkeypatch.setenv("BRAAS_HPC_POLL_MAX", "2")
    assert _pauses_of_watch(monkeypatch, 4, None) == [2, 2, 2]


def test_watch_at_the_add_on_panel_s_pace(monkeypatch) -> None:  # noqa: ANN001
    """The jobs list's follower: 5 s, then 1.6 times longer each, up to a minute; never under 2 s."""
    pauses = _pauses_of_watch(monkeypatch, 9, 60, first_s=5, growth=1.6)
    assert [round(p, 2) for p in pauses] == [5, 8, 12.8, 20.48, 32.77, 52.43, 60, 60]
    assert _pauses_of_watch(monkeypatch, 3, 60, first_s=0.5, growth=0.5) == [2, 2]


def test_poll_max_refuses_what_would_hammer_the_scheduler(monkeypatch) -> None:  # noqa: ANN001
    import pytest

    from braas_hpc.core.errors import UsageError
    from braas_hpc.core.watch import poll_max

    for bad in (1.0, 0.0, -5.0, float("nan")):
        with pytest.raises(UsageError, match="at least 2 s"):
            poll_max(bad)
    monkeypatch.setenv("BRAAS_HPC_POLL_MAX", "soon")
    with pytest.raises(UsageError, match="BRAAS_HPC_POLL_MAX='soon' is not a number"):
        poll_max()


def _watch_through(monkeypatch, answers: list[tuple[list[str], str]]) -> tuple[list[tuple[list[str], list[str]]],
                                                                                 list[list[str] | None]]:
    """`watch` over answers given as (jobs answered COMPLETED, kind of the error for job "down" or "");
    returns what each poll yielded (jobs shown, jobs in error) and the names each poll asked about."""
    from braas_hpc.core import monitor, recovery, watch
    from braas_hpc.core.errors import BraasError, ConnectionFailed

    polls = iter(answers)
    asked: list[list[str] | None] = []
    errors = {"connection": ConnectionFailed("refused"), "preset_missing": monitor.PresetMissing("gone"),
              "error": BraasError("unreadable")}
    record = JobRecord("down", "site", SPEC, "/r", ("7",), "RUNNING", {}, 0, 0.0)

    async def answer(names):  # noqa: ANN001, ANN202
        asked.append(names)
        done, kind = next(polls)
        statuses = [monitor.JobStatus(j, "site", COMPLETED, 1, 1, {}, (), ()) for j in done]
        failed = [monitor.ClusterError("site", (record,), errors[kind])] if kind else []
        return monitor.StatusReport(statuses, failed), []

    async def pause(seconds: float) -> None:
        pass

    monkeypatch.setattr(recovery, "status_and_recover", answer)
    monkeypatch.setattr(watch.asyncio, "sleep", pause)
    seen = []

    async def run() -> None:
        async for report, _ in watch.watch(None, 2):
            seen.append(([s.job for s in report.statuses], sorted(report.unanswered())))

    asyncio.run(run())
    return seen, asked


def test_watch_shows_the_others_and_waits_out_a_cluster_that_comes_back(monkeypatch) -> None:  # noqa: ANN001
    seen, asked = _watch_through(monkeypatch, [(["a"], "connection"), (["a"], "connection"), (["a", "down"], "")])
    assert seen == [(["a"], ["down"]), (["a"], ["down"]), (["a", "down"], [])]
    assert asked == [None, ["a", "down"], ["a", "down"]]


def test_watch_ends_when_only_a_lasting_error_is_left(monkeypatch) -> None:  # noqa: ANN001
    for kind in ("preset_missing", "error"):
        seen, asked = _watch_through(monkeypatch, [(["a"], kind)])
        assert seen == [(["a"], ["down"])] and asked == [None]


def test_watch_gives_up_on_a_cluster_after_max_outages(monkeypatch) -> None:  # noqa: ANN001
    from braas_hpc.core.watch import MAX_OUTAGES

    seen, _ = _watch_through(monkeypatch, [(["a"], "connection")] * (MAX_OUTAGES + 1))
    assert len(seen) == MAX_OUTAGES + 1 and seen[-1] == (["a"], ["down"])


def test_wait_raises_its_jobs_error_once_waiting_no_longer_helps(monkeypatch) -> None:  # noqa: ANN001
    import pytest

    from braas_hpc.core import monitor, recovery, watch

    record = JobRecord("down", "gone", SPEC, "/r", ("7",), "RUNNING", {}, 0, 0.0)
    missing = monitor.PresetMissing("preset 'gone' no longer exists")

    async def answer(names):  # noqa: ANN001, ANN202
        return monitor.StatusReport([], [monitor.ClusterError("gone", (record,), missing)]), []

    monkeypatch.setattr(recovery, "status_and_recover", answer)
    with pytest.raises(monitor.PresetMissing) as raised:
        asyncio.run(watch.wait("down"))
    assert raised.value is missing and raised.value.exit_code == 2
