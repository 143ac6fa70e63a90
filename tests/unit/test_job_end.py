"""`--on-done` (braas_hpc/core/job_end.py): the user's command, run once per job when it ends, with the job
only in environment variables; and desktop notifications (braas_hpc/core/notify.py) through a stand-in
`notify-send` on PATH that records its argv (no desktop here: the stand-in is the only one there is).
The real job with --auto-download and --on-done on the test cluster: tests/integration/test_live_view.py."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from braas_hpc.core import job_end, notify
from braas_hpc.core.errors import UsageError
from braas_hpc.core.monitor import JobStatus
from braas_hpc.core.transport import pool
from tests.unit.test_round_trips import RecordingTransport, _frames, _job, cluster  # noqa: F401

RECORDER = """import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"argv": sys.argv[2:], "env": {k: v for k, v in os.environ.items()
                                                         if k.startswith("BRAAS_")}}) + "\\n")
"""
HOSTILE = "x'; touch pwned-$(id -u) `touch pwned2` \"$HOME\" ; #"


def _status(job: str, state: str, done: int = 2) -> JobStatus:
    return JobStatus(job, "faraway", state, done, 4, missing=tuple(range(done + 1, 5)))


def test_the_command_runs_once_per_job_with_the_job_only_in_its_environment(tmp_path: Path, user_dirs: dict,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    script, runs = tmp_path / "record.py", tmp_path / "runs.jsonl"
    script.write_text(RECORDER)
    told: list[str] = []
    ends = job_end.JobEnd(job_end.hook_argv(f"{sys.executable} {script} {runs} 'two words' $BRAAS_JOB"),
                          tell=told.append)

    async def go() -> None:
        for status in (_status(HOSTILE, "RUNNING"), _status(HOSTILE, "FAILED"), _status(HOSTILE, "FAILED"),
                       _status("other", "PENDING", 0), _status("other", "COMPLETED", 4)):
            await ends.status(status)

    asyncio.run(go())
    lines = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(lines) == 2 and told == [], (lines, told)  # once per job, at its end
    hostile, other = lines
    # Split as a shell would, run by none: "$BRAAS_JOB" stays a word, the job name never reaches the command line.
    assert hostile["argv"] == ["two words", "$BRAAS_JOB"]
    assert hostile["env"]["BRAAS_JOB"] == HOSTILE and hostile["env"]["BRAAS_STATE"] == "FAILED"
    assert (hostile["env"]["BRAAS_FRAMES_DONE"], hostile["env"]["BRAAS_FRAMES_TOTAL"]) == ("2", "4")
    assert hostile["env"]["BRAAS_MISSING"] == "3-4" and hostile["env"]["BRAAS_OUTPUT_DIR"] == ""
    assert other["env"]["BRAAS_JOB"] == "other" and other["env"]["BRAAS_STATE"] == "COMPLETED"
    assert not list(tmp_path.glob("pwned*"))


def test_a_failing_or_missing_command_is_told_not_fatal(tmp_path: Path, user_dirs: dict) -> None:
    told: list[str] = []
    failing = job_end.JobEnd(job_end.hook_argv(f"{sys.executable} -c 'raise SystemExit(3)'"), tell=told.append)
    missing = job_end.JobEnd(["/nonexistent/braas-hook"], tell=told.append)
    asyncio.run(failing.status(_status("a", "COMPLETED", 4)))
    asyncio.run(missing.status(_status("b", "CANCELLED")))
    assert told[0].startswith("a: --on-done ") and told[0].endswith("exited with status 3"), told
    assert told[1].startswith("b: --on-done /nonexistent/braas-hook could not start"), told


def test_a_command_that_does_not_split_is_refused() -> None:
    with pytest.raises(UsageError, match="cannot be split"):
        job_end.hook_argv("notify 'unclosed")
    with pytest.raises(UsageError, match="needs a command"):
        job_end.hook_argv("   ")


def _stand_in(bin_dir: Path, name: str, log: Path) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) "
                    "+ '\\n')\n")
    tool.chmod(0o700)


def test_a_desktop_notification_goes_to_notify_send_as_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "notify.jsonl"
    _stand_in(tmp_path / "bin", "notify-send", log)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert asyncio.run(notify.notify("braas-hpc", f"Job {HOSTILE} is done: 4 of 4 frames")) is True
    (argv,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv == ["--app-name=braas-hpc", "--", "braas-hpc", f"Job {HOSTILE} is done: 4 of 4 frames"]


def test_no_notifier_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert asyncio.run(notify.notify("braas-hpc", "done")) is False
    broken = tmp_path / "notify-send"  # there, but it cannot start
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o700)
    assert asyncio.run(notify.notify("braas-hpc", "done")) is False
    assert notify.notify_argv("t", "x", "linux", lambda _name: None) is None


def test_the_other_systems_get_the_text_as_data() -> None:
    found = {"osascript": "/usr/bin/osascript", "powershell": "C:/ps.exe", "gdbus": "/usr/bin/gdbus"}
    mac, _ = notify.notify_argv("T", "it's \"done\"", "darwin", found.get) or ([], {})
    assert mac[-2:] == ["T", "it's \"done\""] and all("done" not in word for word in mac[:-2])
    windows, env = notify.notify_argv("T", "x'; rm", "win32", found.get) or ([], {})
    assert env == {"BRAAS_NOTIFY_TITLE": "T", "BRAAS_NOTIFY_TEXT": "x'; rm"} and "rm" not in " ".join(windows)
    gdbus, _ = notify.notify_argv("T", "it's", "linux", lambda name: found.get(name) if name == "gdbus" else None) \
        or ([], {})
    assert gdbus[0] == "/usr/bin/gdbus" and "'it\\'s'" in gdbus
    assert os.path.basename(gdbus[0]) == "gdbus"


def test_frames_download_themselves_as_they_land(cluster: RecordingTransport, tmp_path: Path) -> None:  # noqa: F811
    """--auto-download with the download verb's code: each report with more frames fetches them, the end once
    more; nothing for a job that does not count (status --watch: one that had ended before)."""
    paths = _job("job-auto")
    _job("job-old")
    _frames(paths, range(1, 3))
    ends = job_end.JobEnd(download_to=lambda job: tmp_path / "frames" / job, counts=lambda job: job == "job-auto")
    folder = tmp_path / "frames" / "job-auto"
    seen: list[list[str]] = []

    async def go() -> None:
        try:
            await ends.status(JobStatus("job-auto", "trips", "RUNNING", 2, 4))
            seen.append(sorted(p.name for p in folder.iterdir()))
            _frames(paths, range(3, 5))
            await ends.status(JobStatus("job-auto", "trips", "COMPLETED", 4, 4))
            await ends.status(JobStatus("job-old", "trips", "COMPLETED", 4, 4))
        finally:
            await pool.close_all()

    asyncio.run(go())
    assert seen == [["frame_000001.png", "frame_000002.png"]]  # while it ran
    assert len(list(folder.iterdir())) == 4
    assert not (tmp_path / "frames" / "job-old").exists()
