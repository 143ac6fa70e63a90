"""The group's bookkeeping (core/group.py) between looks: what a member's markers and frames say becomes
done, lost (back to the pool, or given up after the retries) or left alone; and taking chunks away from a
cluster never takes one its task claimed first (the same claims render_task.py makes). The whole group on
the test cluster: tests/integration/test_group.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from braas_hpc.core import group, group_state, registry
from braas_hpc.core.fanout import Group
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.markers import parse_marker
from braas_hpc.core.monitor import JobStatus
from braas_hpc.core.transport.local import LocalTransport


@pytest.fixture(autouse=True)
def own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))


def _plan(held: list[tuple[int, ...]]) -> tuple[Group, dict]:
    """A group whose member `a` holds `held` (a job in the registry), `b` nothing yet."""
    plan = Group.plan("film", [f for c in held for f in c], 1, ["a", "b"])
    plan.member("a").handed, plan.pool = list(held), []
    frames = tuple(f for c in held for f in c)
    registry.add_job(JobSpec("film.a", "a", "/s.blend", frames, tasks=tuple(held), group="film"), "/w", {"1": 1},
                     "RUNNING")
    data = {"request": {"retries": 1}, "jobs": {"a": "film.a"}, "given_at": {}, "lost": {}, "given_up": [],
            "cancelled": False}
    return plan, data


def _look(state: str, frames: set[int], missing: set[int], markers: list[dict]) -> group_state.Look:
    status = JobStatus("film.a", "a", state, 0, 0, missing=tuple(sorted(missing)))
    return group_state.Look("a", status, frozenset(frames), markers)


def _marker(frames: list[int], state: str, rendered: list[int] = (), started: float = 100.0) -> dict:
    return {"frames": frames, "state": state, "rendered": list(rendered), "skipped": [], "started": started,
            "finished": started + 5 if state != "running" else None}


def test_a_task_that_said_done_is_done_though_the_frame_listing_missed_its_frame() -> None:
    """The listing and the markers are read one after the other: a frame written in between is not lost."""
    plan, data = _plan([(1,), (2,)])
    look = _look("RUNNING", {1, 2}, {2}, [_marker([1], "done", [1]), _marker([2], "done", [2])])
    assert group_state.observe(data, plan, {"a": look}) == []
    assert plan.member("a").done == [(1,), (2,)] and plan.pool == []


def test_frames_a_task_failed_go_back_to_the_pool_and_its_rendered_ones_stay_done() -> None:
    plan, data = _plan([(1, 2, 3), (4, 5, 6)])
    look = _look("RUNNING", {1, 2, 3, 4, 5, 6}, {2, 4, 5, 6},
                 [_marker([1, 2, 3], "failed", [1, 3]), _marker([4, 5, 6], "running")])
    notes = group_state.observe(data, plan, {"a": look})
    assert notes == ["a lost frames 2: back to the group"]
    assert plan.pool == [(2,)] and plan.member("a").handed == [(4, 5, 6), (1, 3)]
    assert plan.member("a").done == [(1, 3)]
    assert registry.get_job("film.a").spec.frames == (1, 3, 4, 5, 6)  # the member's record follows


def test_a_job_that_ended_loses_what_its_tasks_never_finished() -> None:
    """A node that died leaves its marker `running`; once the scheduler says the job ended, those frames
    go back, and after the retries they are given up and the group fails."""
    plan, data = _plan([(1,), (2,)])
    look = _look("FAILED", {1, 2}, {2}, [_marker([1], "done", [1]), _marker([2], "running")])
    assert group_state.observe(data, plan, {"a": look}) == ["a lost frames 2: back to the group"]
    assert plan.pool == [(2,)]
    plan.pool = []
    plan.member("a").handed.append((2,))  # handed to it again, and lost again: no retries left
    assert group_state.observe(data, plan, {"a": look}) == ["a lost frames 2: given up (no retries left)"]
    assert plan.pool == [] and data["given_up"] == [(2,)]
    status = group_state.status_of("film", data, plan, {"a": look}, ())
    assert status.missing == (2,) and status.frames_total == 2


def test_a_running_task_is_left_alone() -> None:
    plan, data = _plan([(1,), (2,)])
    look = _look("RUNNING", {1, 2}, {1, 2}, [_marker([1], "running")])
    assert group_state.observe(data, plan, {"a": look}) == []
    assert plan.pool == [] and plan.member("a").done == []


def test_taking_chunks_away_never_takes_one_a_task_claimed(tmp_path: Path) -> None:
    """The driver's claim and a task's claim are the same mkdir: whichever comes first wins. A chunk taken
    gets its task's marker (`moved`, as the task would write it) and its task alone is cancelled."""
    paths = JobPaths(str(tmp_path), "film.a")
    os.makedirs(f"{paths.claims_dir}/3")  # the task of chunk (3, 4) started
    Path(f"{paths.claims_dir}/3/task").write_text("1 node\n")
    cancelled = tmp_path / "cancelled"
    scheduler = SimpleNamespace(  # records what it was asked to cancel (each scheduler's argv: test_schedulers)
        task_id=lambda array, task: f"{array}_{task}",
        cancel_argv=lambda ids: ["sh", "-c", 'printf "%s\\n" "$@" >> "$0"', str(cancelled), *ids])
    placed = {"1": {"round": 2, "task": 1, "id": "77", "whole": False},  # task 1 of round 2's array
              "3": {"round": 2, "task": 2, "id": "77", "whole": False},
              "5": {"round": 0, "task": 4, "id": "80", "whole": True}}  # a site without arrays: its own job

    async def take() -> list[tuple[int, ...]]:
        member = SimpleNamespace(transport=LocalTransport(), paths=paths, scheduler=scheduler)
        return await group._take_away(member, [(1, 2), (3, 4), (5,)], placed)

    assert asyncio.run(take()) == [(1, 2), (5,)]
    assert Path(f"{paths.claims_dir}/1/moved").exists() and Path(f"{paths.claims_dir}/5/moved").exists()
    assert not Path(f"{paths.claims_dir}/3/moved").exists()
    assert cancelled.read_text().split() == ["77_1", "80"]  # never task 2: it claimed its chunk first
    written = {p.name: parse_marker(p.read_text()) for p in Path(paths.status_dir).iterdir()}
    assert set(written) == {"r2-task-1.json", "task-4.json"}, written  # no temporary file left either
    assert written["r2-task-1.json"]["state"] == "moved" and written["r2-task-1.json"]["frames"] == [1, 2]
    assert written["task-4.json"]["task"] == 4 and written["task-4.json"]["frames"] == [5]


def test_a_chunk_whose_task_is_not_known_is_still_taken_and_nothing_cancelled(tmp_path: Path) -> None:
    paths = JobPaths(str(tmp_path), "film.a")
    member = SimpleNamespace(transport=LocalTransport(), paths=paths, scheduler=SimpleNamespace(
        task_id=lambda array, task: None, cancel_argv=lambda ids: ["false"]))
    assert asyncio.run(group._take_away(member, [(1, 2)], {})) == [(1, 2)]
    assert Path(f"{paths.claims_dir}/1/moved").exists() and not Path(paths.status_dir, "task-1.json").exists()


def test_each_chunk_is_placed_at_its_task() -> None:
    data: dict = {}
    array = SimpleNamespace(scheduler_ids=("77",), round=3)
    group._place(data, "a", array, [(1, 2), (3,)])
    assert data["placed"]["3"] == {"preset": "a", "chunk": [3], "round": 3, "task": 2, "id": "77", "whole": False}
    one_job_each = SimpleNamespace(scheduler_ids=("80", "81"), round=0)
    group._place(data, "b", one_job_each, [(1, 2), (3,)])  # given again, elsewhere: the newest place counts
    assert data["placed"]["3"] == {"preset": "b", "chunk": [3], "round": 0, "task": 2, "id": "81", "whole": True}


def test_two_drivers_never_hold_the_group_at_once() -> None:
    registry.add_group("g", {"x": 1})
    assert registry.take_group("g", 60) == {"x": 1, "cancelled": False}
    assert registry.take_group("g", 60) is None  # a second look only reads
    registry.put_group("g", {"x": 2})  # the holder is done: the lease ends
    assert registry.take_group("g", 60) == {"x": 2, "cancelled": False}


def test_a_group_refuses_what_it_cannot_spread(tmp_path: Path) -> None:
    from braas_hpc.core.errors import UsageError
    from braas_hpc.core.spec import SubmitRequest

    request = SubmitRequest(tmp_path / "s.blend", "a", split_samples=4)
    with pytest.raises(UsageError, match="split still renders on one cluster"):
        asyncio.run(group.submit(request, ["a", "b"]))
    with pytest.raises(UsageError, match="movie of a job over several clusters"):
        asyncio.run(group.submit(SubmitRequest(tmp_path / "s.blend", "a", video="h264"), ["a", "b"]))


def test_a_cluster_that_did_not_answer_says_why() -> None:
    plan, data = _plan([(1,), (2,)])
    data["jobs"]["b"] = "film.b"
    plan.member("b").handed = [(3,)]
    looks = {"a": _look("RUNNING", {1, 2}, set(), [_marker([1], "done", [1])]),
             "b": group_state.Look("b", error="connection refused by 10.0.0.7:22", job="film.b")}
    status = group_state.status_of("film", data, plan, looks, ())
    b = next(m for m in status.members if m.preset == "b")
    assert b.state == "UNREACHABLE" and b.to_json()["error"] == "connection refused by 10.0.0.7:22"
    assert next(m for m in status.members if m.preset == "a").error == ""


def test_a_cancel_made_while_a_look_drives_is_never_undone() -> None:
    """The look holding the lease writes its copy of the record back when it ends: a cancel made meanwhile
    (the dashboard's button, `braas-hpc cancel` in another terminal) stays."""
    registry.add_group("g", {"x": 1, "cancelled": False})
    held = registry.take_group("g", 60)
    assert held is not None and held["cancelled"] is False
    registry.cancel_group("g")
    assert registry.group_cancelled("g")
    registry.put_group("g", held)  # the look's stale copy
    assert registry.get_group("g")["cancelled"] is True and registry.take_group("g", 60)["cancelled"] is True


def test_a_cluster_that_cannot_be_reached_rests_before_it_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member given frames while its cluster cannot be reached: the frames go back to the pool, and the
    looks during the next REST_S do not try it again (each try would cost a connection time-out)."""
    from braas_hpc.core.errors import ConnectionFailed

    plan, data = _plan([(1,)])
    plan.pool = [(2,), (3,)]
    tried: list[str] = []

    async def give(data_, plan_, preset, chunks):  # noqa: ANN001, ANN202
        tried.append(preset)
        raise ConnectionFailed("connection refused by 10.0.0.7:22")

    monkeypatch.setattr(group, "_give", give)
    looks = {"a": _look("RUNNING", {1}, set(), [_marker([1], "running")])}
    notes = asyncio.run(group._hand_out(data, plan, looks))  # neither takes its frames
    assert tried == ["a", "b"] and sorted(plan.pool) == [(2,), (3,)], (tried, plan.pool)
    assert any("b could not take frames" in n and "tried again in 5 min" in n for n in notes), notes
    assert not any("a could not take frames" in n and "tried again" in n for n in notes), notes
    asyncio.run(group._hand_out(data, plan, looks))
    assert tried == ["a", "b", "a"]  # b rests; a answered the look (its failure was a passing one)
    shown = {m.preset: m for m in group_state.status_of("film", data, plan, looks, ()).members}
    assert shown["b"].state == "UNREACHABLE" and shown["b"].error == (
        "connection refused by 10.0.0.7:22 (tried again in 5 min)"), shown["b"]
    data["resting"]["b"]["until"] = 0.0  # b's rest is over
    asyncio.run(group._hand_out(data, plan, looks))
    assert tried == ["a", "b", "a", "a", "b"]
