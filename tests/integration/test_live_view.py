"""A real job on the test cluster, followed from the command line: `status --json` shows the newest frame's
preview (a JPEG made on the cluster, fetched with the status call) and each running task's progress within
its frame, while `wait --auto-download --on-done` fetches every frame as it lands and runs the command once
at the end with the job in its environment."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from tests.conftest import run_cli
from tests.helpers import REPO, check_frame

RECORDER = """import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("BRAAS_")}) + "\\n")
"""


def _json(*args: str) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_previews_progress_auto_download_and_on_done(testbed, sample_scene: Path, tmp_path: Path) -> None:  # noqa: ANN001
    # 384x216 (twice the sample): previews are scaled to 256 pixels wide. Enough samples that a frame takes
    # a few seconds, so polls meet tasks within their frames.
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-4", "--chunk", "2",
                "--resolution-percentage", "200", "--samples", "192", "--retries", "0")
    name = job["job"]
    recorder, runs, downloads = tmp_path / "record.py", tmp_path / "runs.jsonl", tmp_path / "frames"
    recorder.write_text(RECORDER)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "braas_hpc.cli", "wait", name, "--timeout", "600", "--json", "--auto-download",
         "--download-dir", str(downloads), "--on-done", f"{sys.executable} {recorder} {runs}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    previews: dict[str, bytes] = {}
    percents: list[float] = []
    deadline = time.monotonic() + 600
    try:
        while waiting.poll() is None and time.monotonic() < deadline:
            entry = _json("status", name, "--no-recover")["jobs"][0]
            percents += [t["percent"] for t in entry["progress"] if t["percent"] is not None]
            assert all(t["task"] in ("task-1", "task-2") and t["frame"] in (None, 1, 2, 3, 4)
                       for t in entry["progress"]), entry
            if entry["preview"]:
                try:
                    previews.setdefault(Path(entry["preview"]).name, Path(entry["preview"]).read_bytes())
                except FileNotFoundError:
                    pass  # replaced by `wait`'s own status call meanwhile: the next poll reads the newer one
            time.sleep(0.5)
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    final = json.loads(out)
    assert waiting.returncode == 0 and final["state"] == "COMPLETED", out + err
    # Previews of several frames came as they landed, each a 256-pixel JPEG of the frame; here only the newest.
    assert len(previews) >= 2, (sorted(previews), percents)
    for data in previews.values():
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.size == (256, 144)
            assert len(image.convert("RGB").getcolors(maxcolors=256 * 144) or []) > 20
    assert final["preview"] and len(list(Path(final["preview"]).parent.glob("*.jpg"))) == 1
    assert final["progress"] == []  # ended: no task runs
    assert percents and any(0 < p < 100 for p in percents), percents  # within frames, read from the logs
    # Every frame downloaded by itself; the command ran once, after the last frame, with the job's facts.
    folder = downloads / name
    for frame in range(1, 5):
        check_frame(folder / f"frame_{frame:06d}.png", (384, 216))
    (env,) = [json.loads(line) for line in runs.read_text().splitlines()]
    assert (env["BRAAS_JOB"], env["BRAAS_STATE"], env["BRAAS_PRESET"]) == (name, "COMPLETED", "testbed")
    assert (env["BRAAS_FRAMES_DONE"], env["BRAAS_FRAMES_TOTAL"], env["BRAAS_MISSING"]) == ("4", "4", "")
    assert env["BRAAS_OUTPUT_DIR"] == str(folder) and env["BRAAS_CLUSTER_DIR"] == f"{job['job_dir']}/out"
    assert env["BRAAS_PREVIEW"] == final["preview"]
