"""A group member's task (cluster_scripts/render_task.py --claims) in real Blender: it claims its chunk
before rendering it, and renders nothing of a chunk another cluster took (the claim the group's driver
leaves, core.group._TAKE_AWAY, run here as it runs on the cluster); a task started again after a requeue
finds its own claim and renders on. Deterministic: on the test cluster a taken chunk's task may be
cancelled before it starts (tests/integration/test_group.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from braas_hpc.core import group
from tests.blender.bpy_builds import MATRIX
from tests.helpers import REPO, make_sample
from tests.testbed import testbed as tb

BUILD = next(b for b in MATRIX if b.version == tb.BPY_VERSION)  # the claims are Python of ours, not Blender's


def _task(scene: Path, job: Path, task: int, home: Path) -> dict:
    done = subprocess.run(
        [BUILD.interpreter(), str(REPO / "braas_hpc" / "bpy_blender.py"), "-b", str(scene), "-P",
         str(REPO / "cluster_scripts" / "render_task.py"), "--", "--job-dir", str(job), "--task", str(task),
         "--resolution-percentage", "10", "--samples", "2", "--claims"],
        capture_output=True, text=True, timeout=600, env=BUILD.env(home))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads((job / "status" / f"task-{task}.json").read_text())


def _take_away(job: Path, first_frame: int) -> subprocess.CompletedProcess[str]:
    """The driver's claim of the chunk starting at `first_frame` (no marker: its task's place not known)."""
    return subprocess.run(["sh", "-c", group._TAKE_AWAY, "sh", str(job / "claims"), str(job / "status"),
                           str(first_frame), "", ""], capture_output=True, text=True, check=True)


def test_a_task_renders_nothing_of_a_chunk_taken_for_another_cluster(tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "scene")
    job = tmp_path / "job"
    job.mkdir()
    (job / "frames.txt").write_text("1,2\n3\n")
    taken = _take_away(job, 3)
    assert taken.stdout.split() == ["3"]  # the driver's claim of chunk (3,)

    moved = _task(scene, job, 2, tmp_path / "home")
    assert moved["state"] == "moved" and moved["rendered"] == [] and not (job / "out" / "frame_000003.png").exists()

    first = _task(scene, job, 1, tmp_path / "home")
    assert first["state"] == "done" and first["rendered"] == [1, 2]
    assert (job / "claims" / "1" / "task").is_file()  # the task's own claim
    again = _take_away(job, 1)
    assert again.stdout == ""  # a chunk its task claimed first is never taken

    (job / "out" / "frame_000002.png").unlink()  # requeued after losing a frame: its own claim, so it renders
    requeued = _task(scene, job, 1, tmp_path / "home")
    assert requeued["state"] == "done" and requeued["rendered"] == [2] and requeued["skipped"] == [1]
