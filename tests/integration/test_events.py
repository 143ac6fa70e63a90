"""Knowing at once (core.events) on real Slurm: `wait` returns when the job's end is seen on the cluster, not
at the next back-off poll; frames are shown and fetched as they land, without a status call; the scheduler
is asked no more often than without the watcher.

Three jobs of 8 frames render side by side: one waited on with the watcher kept off (the baseline), one
with it, and one followed by `download --follow`. The cluster's sacct and squeue are wrapped for this test
to log every call; the sacct calls naming each job's id (one per status poll) are counted."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import re
import secrets
import time
from pathlib import Path

import pytest

from braas_hpc.core import events, recovery, transfer, watch
from braas_hpc.core.context import job_context
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import pool
from tests.conftest import run_cli
from tests.helpers import eventually
from tests.retarget import to_toml
from tests.testbed import testbed as tb

COUNTING = """#!/bin/sh
# Test wrapper (test_events): the real {tool}, every call logged.
printf '%s\\n' "{tool} $*" >> {log}
exec /usr/bin/{tool} "$@"
"""
SLOW_POLLS_S = 60.0  # the back-off's polls, made sparse: a poll that comes early was brought by an event
DEFAULT_BACK_OFF_S = (watch.POLL_MIN_S, watch.POLL_MAX_S)  # what `wait` polls with when nobody changes it
FRAMES = 8  # about a second each, one task at a time: long enough for the default back-off to poll 3 times


def _submit(scene: Path) -> dict:
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", f"1-{FRAMES}", "--max-parallel", "1",
                   "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _polls_of_default_back_off(first: float, end: float) -> int:
    """How many polls `wait` makes with the default back-off (2, 4, 8 ... s, at most 30) from `first` to
    see a job that ended at `end`: every poll due before the end, and one after it."""
    (interval, longest), due, count = DEFAULT_BACK_OFF_S, first, 0
    while due < end:
        count, due, interval = count + 1, due + interval, min(interval * 2, longest)
    return count + 1


def _end_of(remote, job_id: str) -> float:  # noqa: ANN001
    """When Slurm recorded the array's last task ending (whole seconds: never later than it was), once
    accounting has every task's end ("Unknown" until slurmdbd has it)."""
    ends = eventually(lambda: remote(f"sacct -X --noheader --parsable2 -o End -j {job_id}").stdout.split(),
                      lambda ends: len(ends) == FRAMES and all(e[:1].isdigit() for e in ends),
                      f"accounting to record every task of {job_id} ending")
    return max(datetime.datetime.fromisoformat(end).timestamp() for end in ends)


def _calls_naming(log: str, tool: str, job_id: str) -> int:
    return sum(1 for line in log.splitlines()
               if line.startswith(f"{tool} ") and re.search(rf"(?<![0-9]){job_id}(?![0-9])", line))


def test_wait_and_follow_learn_from_the_cluster_at_once(testbed, remote, keeper, sample_scene: Path,  # noqa: ANN001
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the connection keeper, as users run it: the watchers' streams ride the kept connection."""
    layout = tb.Layout.from_env()
    log = f"/tmp/braas-events-{secrets.token_hex(4)}.log"
    wrappers = [layout.bin / tool for tool in ("sacct", "squeue")]
    assert not any(w.exists() for w in wrappers), "another test wraps sacct or squeue right now"
    off, on, followed = (_submit(sample_scene) for _ in range(3))
    seen: list[tuple] = []  # what each JobEvents.until returned, and each status poll, in order
    real_until, real_poll, real_status = events.JobEvents.until, recovery.status_and_recover, transfer.job_status

    async def until(self: events.JobEvents, deadline: float) -> tuple[bool, list[events.Event]]:
        poll, got = await real_until(self, deadline)
        seen.append(("until", set(self.records), time.monotonic(), deadline, poll, got))
        return poll, got

    async def poll(names):  # noqa: ANN001, ANN202
        found = await real_poll(names)
        seen.append(("poll", tuple(names), time.monotonic(), [s.state for s in found[0].statuses], time.time()))
        return found

    async def status(job):  # noqa: ANN001, ANN202
        seen.append(("status", job.name, time.monotonic()))
        return await real_status(job)

    real_follow = events.JobEvents.follow

    def follow(self: events.JobEvents, records, presets) -> None:  # noqa: ANN001
        records = list(records)
        if all(r.name != off["job"] for r in records):  # the baseline waits on the back-off alone
            real_follow(self, records, presets)

    monkeypatch.setenv(events.EVENTS_ENV, "on")  # the suite runs without (tests/conftest.py)
    monkeypatch.setattr(events.JobEvents, "until", until)
    monkeypatch.setattr(events.JobEvents, "follow", follow)
    monkeypatch.setattr(recovery, "status_and_recover", poll)
    monkeypatch.setattr(transfer, "job_status", status)
    monkeypatch.setattr(watch, "POLL_MIN_S", SLOW_POLLS_S)
    rounds: list[tuple[int, int]] = []  # (frames fetched, status calls so far) per download round

    async def run() -> list:
        def counted(got: transfer.DownloadResult) -> None:
            rounds.append((got.downloaded, sum(1 for s in seen if s[0] == "status")))

        try:
            return await asyncio.gather(
                watch.wait(off["job"], timeout_s=900, poll_max_s=SLOW_POLLS_S),
                watch.wait(on["job"], timeout_s=900, poll_max_s=SLOW_POLLS_S),
                transfer.download(job_context(followed["job"]), tmp_path / "frames", follow=True, on_round=counted))
        finally:
            await pool.close_all()

    for wrapper in wrappers:
        wrapper.write_text(COUNTING.format(tool=wrapper.name, log=log))
        wrapper.chmod(0o755)
    try:
        off_final, on_final, fetched = asyncio.run(run())
    finally:
        for wrapper in wrappers:
            wrapper.unlink()
    calls = remote(f"cat {log}; rm -f {log}").stdout
    assert off_final.state == on_final.state == "COMPLETED", (off_final, on_final)
    assert fetched.downloaded == FRAMES and sorted(p.name for p in (tmp_path / "frames").glob("frame_*")) == [
        f"frame_{f:06d}.png" for f in range(1, FRAMES + 1)]

    # `wait` with the watcher: its last poll (the one that saw the end) came before the back-off's was
    # due, right after an event said the job ended.
    mine = [s for s in seen if (s[0] == "poll" and s[1] == (on["job"],)) or (s[0] == "until" and on["job"] in s[1])]
    assert mine[-1][0] == "poll" and mine[-1][3] == ["COMPLETED"], mine[-3:]
    woke = mine[-2]
    assert woke[0] == "until" and woke[4] is True and woke[2] < woke[3] - 5, woke  # an event, not the deadline
    said = [e for s in mine if s[0] == "until" for e in s[5]]
    assert any(e.kind == "summary" or e.kind == "marker" and e.state != "running" for e in said), said
    # Frames were shown between polls (what `status --watch` draws): the watcher said they landed.
    assert any(s[0] == "until" and s[4] is False and any(e.kind == "frame" for e in s[5]) for s in mine), mine
    # The baseline never had a watcher; it returned at a back-off poll.
    assert not [s for s in seen if s[0] == "until" and off["job"] in s[1]]

    # No more scheduler queries than the default back-off makes for the same job: one sacct per status
    # poll. (A poll brought by the end can meet accounting that has not recorded the last task yet; it then
    # asks squeue too, in that poll, and the next poll comes when the gap allows.) The sparse baseline is
    # no yardstick here: it is slower than anything a user runs, so that an early poll shows.
    off_calls, on_calls = (_calls_naming(calls, "sacct", job["scheduler_ids"][0]) for job in (off, on))
    first = next(s[4] for s in mine if s[0] == "poll")
    default_polls = _polls_of_default_back_off(first, _end_of(remote, on["scheduler_ids"][0]))
    assert off_calls >= 1 and on_calls <= default_polls, (on_calls, default_polls, calls)

    # `download --follow` fetched frames in rounds that asked the scheduler nothing.
    assert any(got and calls_then == calls_before for (got, calls_then), (_, calls_before)
               in zip(rounds[1:], rounds, strict=False)), rounds


def test_without_python_on_the_login_node_wait_polls_as_before(testbed, sample_scene: Path,  # noqa: ANN001
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    base = load_preset("testbed")
    preset = dataclasses.replace(base, name="tb-events-nopy", login_python="/nonexistent/python3")
    (Path(base.source).parent / f"{preset.name}.toml").write_text(to_toml(preset))
    done = run_cli("submit", str(sample_scene), "--preset", preset.name, "--frames", "1-2", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["job"]
    monkeypatch.setenv(events.EVENTS_ENV, "on")
    followers: list[events.JobEvents] = []
    real_follow = events.JobEvents.follow

    def follow(self: events.JobEvents, records, presets) -> None:  # noqa: ANN001
        followers.append(self)
        real_follow(self, records, presets)

    monkeypatch.setattr(events.JobEvents, "follow", follow)

    async def run() -> str:
        try:
            return (await watch.wait(job, timeout_s=600)).state
        finally:
            await pool.close_all()

    assert asyncio.run(run()) == "COMPLETED"
    assert followers and followers[0].unable == {preset.name}  # tried once, then the back-off alone
