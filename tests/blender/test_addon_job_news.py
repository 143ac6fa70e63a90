"""The panel's side of a running job (braas_hpc/blender/jobs_list.py, job_news.py) in real bpy with the UI
branch's timer pumped by hand: the follower's reports put each job's newest preview and task progress in
the list; a job seen to end is reported by Blender and shown as a desktop notification (a stand-in
`notify-send` on PATH records its argv: there is no desktop here); with "Download frames as they land" on,
the follower is started again with each job's folder to download into. The follower's own work is
replaced by one that reports (the real one on the test cluster: tests/integration/test_addon_follow.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.blender.addon_runner import Session

SCRIPT = """
import asyncio
from braas_hpc.blender import activity, jobs_list, ui
from braas_hpc.blender.addon import runtime
runtime.force_ui = True
runtime.ensure_pump = lambda: None  # the bpy module's timers never fire: this script pumps
started, go_on = [], []
out = os.open(REPORTS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.dup2(out, 1)  # Blender prints an operator's reports here in background mode

async def follow(names, deliver, first_s, growth, **extra):
    started.append({n: str(p) for n, p in extra.get("download_to", {}).items()})
    deliver(activity.Refresh(rows=[activity.JobRow(n, "faraway", "RUNNING", 1, 4, preview=PREVIEW,
                                                   progress="task-1: frame 2 40%") for n in names]))
    while not go_on:
        await asyncio.sleep(0.05)
    deliver(activity.Refresh(rows=[activity.JobRow(n, "faraway", "FAILED", 3, 4) for n in names]))
    await asyncio.sleep(3600)

activity.follow = follow
jobs = lambda: bpy.context.window_manager.braas_hpc.jobs
jobs_list.apply_rows([activity.JobRow("a", "faraway", "PENDING", 0, 4, created=1.0)])
result["running"] = runtime.wait_until(lambda: jobs()["a"].progress != "", 30)
item = jobs()["a"]
result["item"] = [item.state, item.preview, item.progress]
ui._live_icon("a", item.preview)  # as the panel draws it (no icon ids without a window: what was loaded)
result["icon"] = ["live:a" in ui._thumbnails(), ui._live_shown.get("a", "").split("@")[0]]
result["first"] = started[-1]
prefs.auto_download = True  # the follower starts again, downloading
result["again"] = runtime.wait_until(lambda: len(started) == 2, 30) and started[-1]
go_on.append(True)
result["ended"] = runtime.wait_until(lambda: jobs()["a"].state == "FAILED" and os.path.exists(NOTIFIED), 30)
result["message"] = runtime.state.message.text
result["progress_after"] = jobs()["a"].progress
sys.stdout.flush()
"""


def test_previews_progress_and_a_job_that_ends_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preview, notified, reports = tmp_path / "preview.jpg", tmp_path / "notified.json", tmp_path / "reports.txt"
    Image.new("RGB", (64, 36), (200, 30, 30)).save(preview, "JPEG")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "notify-send").write_text(f"#!{sys.executable}\nimport json, sys\n"
                                         f"open({str(notified)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    (bin_dir / "notify-send").chmod(0o700)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    prelude = f"PREVIEW, NOTIFIED, REPORTS = {str(preview)!r}, {str(notified)!r}, {str(reports)!r}\n"
    got = Session(tmp_path / "user").run(SCRIPT, prelude=prelude)
    assert got["running"] and got["item"] == ["RUNNING", str(preview), "task-1: frame 2 40%"], got
    assert got["icon"] == [True, str(preview)], got
    assert got["first"] == {}, got  # no downloading unless asked
    folder = got["again"]["a"]
    assert folder.endswith(os.path.join("braas-hpc", "a")), got
    assert got["ended"] and got["message"] == "Job a failed: 3 of 4 frames" and got["progress_after"] == "", got
    assert json.loads(notified.read_text()) == ["--app-name=braas-hpc", "--", "braas-hpc",
                                                "Job a failed: 3 of 4 frames"]
    assert "Warning: Job a failed: 3 of 4 frames" in reports.read_text().splitlines()  # Blender's own report
