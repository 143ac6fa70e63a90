"""The jobs list's follower on the main thread (braas_hpc/blender/jobs_list.Follower), in real bpy with
the UI branch's timer pumped by hand: which jobs it follows, when it starts again and stops, and how its
reports reach the list. Its work on the loop is replaced by one that reports at once and then waits (the
real one, on the test cluster: tests/integration/test_addon_follow.py)."""

from __future__ import annotations

from pathlib import Path

from tests.blender.addon_runner import Session

SCRIPT = """
import asyncio, threading
from braas_hpc.blender import activity, jobs_list
from braas_hpc.blender.addon import runtime
runtime.force_ui = True
runtime.ensure_pump = lambda: None  # the bpy module's timers never fire: this script pumps
started, threads = [], []

async def follow(names, deliver, first_s, growth):  # reports each job running with one frame, then waits
    threads.append(threading.current_thread().name)
    deliver(activity.Refresh(rows=[activity.JobRow(n, "faraway", "RUNNING", 1, 4) for n in names],
                             errors={"faraway": "no route to host"}))
    deliver(activity.Refresh(rows=[activity.JobRow(n, "faraway", "RUNNING", 2, 4) for n in names],
                             errors={"faraway": "no route to host"}))
    started.append([sorted(names), first_s, growth])  # after its reports: a step waits for them too
    await asyncio.sleep(3600)

activity.follow = follow
jobs = lambda: bpy.context.window_manager.braas_hpc.jobs
row = lambda name, state, created: activity.JobRow(name, "faraway", state, 0, 4, created=created)
ops = lambda: runtime.state.bridge.active(jobs_list.FOLLOW)
steps = result["steps"] = []

def settle(predicate, seconds=30):  # generous: the suite runs beside other tests on two cores
    return runtime.wait_until(predicate, seconds)

jobs_list.apply_rows([row("a", "PENDING", 1.0), row("old", "COMPLETED", 0.5)])
steps.append(["a", settle(lambda: started and jobs()["a"].frames_done == 2), started[-1], len(ops()),
              runtime.pump(), runtime.state.message.text])
first = jobs_list.follower.operation
runtime.tell("job b submitted")
jobs_list.apply_rows([row("b", "PENDING", 2.0)])  # a job joins: followed with the other, by a new follower
steps.append(["b", settle(lambda: len(started) == 2 and jobs()["b"].frames_done == 2), started[-1][0],
              first.cancelled, len(ops()), runtime.state.message.text])
second = jobs_list.follower.operation
jobs_list.apply_rows([row("a", "COMPLETED", 1.0)])  # one ends: the follower goes on with the other
drawn, redraw = [], runtime.redraw
runtime.redraw = lambda: drawn.append(1)
steps.append(["a ended", settle(lambda: False, 5), len(started), second.cancelled])  # 5 s of nothing new
runtime.redraw = redraw
result["redraws while nothing changed"] = len(drawn)
bpy.context.preferences.system.use_online_access = False
steps.append(["offline", settle(lambda: not ops()), second.cancelled, jobs_list.follower.describe()])
bpy.context.preferences.system.use_online_access = True
steps.append(["online", settle(lambda: len(started) == 3), started[-1][0]])
jobs_list.follower.soon()  # a cancel or a resubmission: from the first interval again
# Its reports applied before b is cancelled below: a report read later would say b runs again.
steps.append(["soon", settle(lambda: len(started) == 4 and jobs_list.follower.reports.empty()), started[-1][0]])
jobs_list.apply_rows([row("b", "CANCELLED", 2.0)])
steps.append(["none", settle(lambda: not ops() and jobs_list.follower.operation is None)])
jobs_list.apply_rows([row("c", "RUNNING", 3.0)])
settle(lambda: len(started) == 5)
last = jobs_list.follower.operation
addon_utils.disable("braas_hpc", default_set=True)
steps.append(["disabled", last.cancelled, jobs_list.follower.operation, runtime.state.bridge.running])
result["threads"] = sorted(set(threads))
"""


def test_the_follower_follows_the_active_jobs_and_hands_reports_to_the_list(tmp_path: Path) -> None:
    got = Session(tmp_path / "user").run(SCRIPT.replace("import asyncio", "import addon_utils, asyncio"))
    steps = {step[0]: step[1:] for step in got["steps"]}
    # Started for the active job only, with the panel's back-off; its reports applied on the main thread
    # (the list shows its frames), the timer looking for reports four times a second while only the
    # follower runs, the cluster's error told.
    assert steps["a"] == [True, [["a"], 5.0, 1.6], 1, 0.25, "faraway: no route to host"], got
    assert got["threads"] == ["braas-hpc-loop"]
    # A job joins: a new follower for both, the old one stopped; the same error is not told again.
    assert steps["b"] == [True, ["a", "b"], True, 1, "job b submitted"], got
    assert steps["a ended"] == [False, 2, False], got  # not started again for a job that ended
    # About 100 pumps in those 5 s, and the panels redrawn only once a second: nothing changed.
    assert 3 <= got["redraws while nothing changed"] <= 7, got
    assert steps["offline"] == [True, True, "Not following the active jobs: Blender's online access is off"], got
    assert steps["online"] == [True, ["b"]] and steps["soon"] == [True, ["b"]], got
    assert steps["none"] == [True], got
    assert steps["disabled"] == [True, None, False], got
