"""Live previews and task progress (braas_hpc/core/live.py) come with the status call: the newest preview
only when it is not the one held here, the running tasks' progress from their logs, and no round trip
more (counted by tests/unit/test_round_trips.py's recording transport). The real render task writing them
on the test cluster: tests/integration/test_live_view.py; real Blender logs: tests/blender/test_live_progress.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from braas_hpc import cli
from braas_hpc.core import live, monitor, registry
from tests.unit.test_round_trips import RecordingTransport, _job, _measured, _set_states, cluster  # noqa: F401


def _jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (256, 144)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _running(tmp_path: Path, name: str = "job-live") -> tuple[Path, Path]:
    paths = _job(name, frames=4)
    job_id = registry.get_job(name).scheduler_ids[0]
    _set_states(tmp_path, [f"{job_id}_1|RUNNING|0:0", f"{job_id}_2|RUNNING|0:0", f"{job_id}_[3-4]|PENDING|0:0"])
    return Path(paths.status_dir), Path(paths.log_dir)


def test_the_newest_preview_comes_with_the_status_once_and_replaces_the_older(cluster: RecordingTransport,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    status_dir, _ = _running(tmp_path)
    first = _jpeg(status_dir / "previews" / "frame_000001.jpg", (200, 10, 10))
    (one,) = _measured(cluster, "status 1 job", lambda: monitor.status(["job-live"]))
    assert one.preview and Path(one.preview).name == "frame_000001.jpg"
    assert Path(one.preview).read_bytes() == first
    assert {oct(p.stat().st_mode & 0o777) for p in Path(one.preview).parent.iterdir()} == {"0o600"}
    assert oct(Path(one.preview).parent.stat().st_mode & 0o777) == "0o700"

    # The same preview is not sent again: the batch's answer holds no picture the second time.
    answers: list[str] = []
    real_parse = monitor.batch.parse

    def parse(stdout: str, steps: list) -> object:  # noqa: ANN001
        parsed = real_parse(stdout, steps)
        answers.append(parsed.by_tag["glimpse"].stdout)
        return parsed

    monitor.batch.parse = parse
    try:
        (two,) = _measured(cluster, "status 1 job", lambda: monitor.status(["job-live"]))
        assert two.preview == one.preview
        assert len(answers) == 1 and not [line for line in answers[0].splitlines() if line.startswith("P\t")]

        # A task finishes a later frame: its preview replaces the older one here, in the same one call.
        newer = _jpeg(status_dir / "previews" / "frame_000002.jpg", (10, 10, 200))
        (three,) = _measured(cluster, "status 1 job", lambda: monitor.status(["job-live"]))
    finally:
        monitor.batch.parse = real_parse
    assert len(answers) == 2 and answers[1].startswith("P\t"), answers
    assert Path(three.preview).name == "frame_000002.jpg" and Path(three.preview).read_bytes() == newer
    assert sorted(p.name for p in Path(three.preview).parent.glob("*.jpg")) == ["frame_000002.jpg"]
    assert three.to_json()["preview"] == three.preview


def test_a_file_that_is_not_a_small_jpeg_is_not_taken(cluster: RecordingTransport, tmp_path: Path) -> None:  # noqa: F811
    status_dir, _ = _running(tmp_path)
    (status_dir / "previews").mkdir()
    (status_dir / "previews" / "frame_000003.jpg").write_bytes(b"#!/bin/sh\necho not a picture\n")
    (one,) = asyncio.run(monitor.status(["job-live"]))
    assert one.preview == ""
    noise = Image.frombytes("RGB", (600, 400), os.urandom(600 * 400 * 3))
    noise.save(status_dir / "previews" / "frame_000003.jpg", "JPEG")  # over the cap: left there
    assert (status_dir / "previews" / "frame_000003.jpg").stat().st_size > live.PREVIEW_BYTES
    (two,) = asyncio.run(monitor.status(["job-live"]))
    assert two.preview == ""


def test_each_running_task_shows_its_progress_within_its_frame(cluster: RecordingTransport,  # noqa: F811
                                                               tmp_path: Path) -> None:
    status_dir, log_dir = _running(tmp_path)
    for task, state in ((1, "running"), (2, "running"), (3, "done")):
        (status_dir / f"task-{task}.json").write_text(json.dumps({"task": task, "state": state}, indent=1))
    # Blender 4's own status lines (a tiled render), and the render task's line as Blender 5 needs it.
    (log_dir / "task-1.log").write_text(
        "Fra:1 Mem:8.41M (Peak 8.48M) | Time:00:00.01 | Scene, ViewLayer | Rendered 0/4 Tiles, Sample 16/16\r"
        "Fra:1 Mem:8.41M (Peak 8.48M) | Time:00:00.02 | Scene, ViewLayer | Rendered 2/4 Tiles, Sample 8/16\n"
        "Fra:1 Mem:8.41M (Peak 8.48M) | Time:00:00.02 | Scene, ViewLayer | Updating Images\n")
    (log_dir / "task-2.log").write_text("braas-hpc: device CPU\nBRAAS-SAMPLES task=2 frame=2 Sample 48/64\n")
    (log_dir / "task-3.log").write_text("BRAAS-SAMPLES task=3 frame=3 Sample 1/64\n")  # ended: not shown
    (one,) = _measured(cluster, "status 1 job", lambda: monitor.status(["job-live"]))
    assert [t.to_json() for t in one.progress] == [{"task": "task-1", "frame": 1, "percent": 62.5},
                                                   {"task": "task-2", "frame": 2, "percent": 75.0}]


def test_progress_lines_of_every_kind() -> None:
    assert live.progress_of("Fra:7 Mem:10.3M | Time:00:00.01 | Scene, ViewLayer | Sample 3/16") == (7, 18.8)
    assert live.progress_of("Mem: 1M | Rendered 1/40 Tiles, Sample 8/16") == (None, 3.8)
    assert live.progress_of("BRAAS-SAMPLES task=1 frame=12 Sample 64/64") == (12, 100.0)
    assert live.progress_of("Fra:3 Mem:8M | Scene, ViewLayer | Finished") == (3, 100.0)
    assert live.progress_of("BRAAS-PROGRESS task=1 frame=4 done=1 total=2 seconds=1.00 status=rendered") == (4, 100.0)
    assert live.progress_of("Rendered 12/64 samples") == (None, 18.8)
    assert live.progress_of("") == (None, None)


def test_status_watch_shows_progress_and_preview_then_downloads_and_runs_on_done(
        cluster: RecordingTransport, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """`status --watch` through the command line (not a terminal: its lines), the job ending at its second poll."""
    status_dir, log_dir = _running(tmp_path)
    out_dir = status_dir.parent / "out"
    (status_dir / "task-1.json").write_text(json.dumps({"task": 1, "state": "running"}, indent=1))
    (log_dir / "task-1.log").write_text("BRAAS-SAMPLES task=1 frame=1 Sample 16/64\n")
    _jpeg(status_dir / "previews" / "frame_000001.jpg", (200, 10, 10))
    job_id = registry.get_job("job-live").scheduler_ids[0]
    record, runs = tmp_path / "record.py", tmp_path / "runs.txt"
    record.write_text("import os, sys\nopen(sys.argv[1], 'a').write(os.environ['BRAAS_JOB'] + ' ' + "
                      "os.environ['BRAAS_STATE'] + ' ' + os.environ['BRAAS_OUTPUT_DIR'] + '\\n')\n")
    held = live.previews_dir("job-live") / "frame_000001.jpg"

    def end_it() -> None:  # once the first poll has brought the preview: every frame on disk, the tasks done
        deadline = time.monotonic() + 60
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for n in range(1, 5):
            (out_dir / f"frame_{n:06d}.png").write_bytes(b"frame %d" % n * 100)
        _set_states(tmp_path, [f"{job_id}_{t}|COMPLETED|0:0" for t in range(1, 5)])

    ender = threading.Thread(target=end_it)
    ender.start()
    code = cli.main(["status", "--watch", "job-live", "--no-recover", "--auto-download", "--download-dir",
                     str(tmp_path / "frames"), "--on-done", f"{sys.executable} {record} {runs}"])
    ender.join()
    shown = capsys.readouterr()
    assert code == 0, shown
    assert "job-live  task-1: frame 1 25%" in shown.out and f"job-live  preview {held}" in shown.out, shown.out
    assert runs.read_text() == f"job-live COMPLETED {tmp_path / 'frames' / 'job-live'}\n"
    assert len(list((tmp_path / "frames" / "job-live").iterdir())) == 4


def test_on_done_and_auto_download_need_a_watch(cluster: RecordingTransport, tmp_path: Path,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _running(tmp_path)
    assert cli.main(["status", "job-live", "--on-done", "true"]) == 2
    assert "use them with --watch" in capsys.readouterr().err
    assert cli.main(["wait", "job-live", "--download-dir", str(tmp_path)]) == 2
    assert "--download-dir goes with --auto-download" in capsys.readouterr().err
