"""Ends a render task whose Blender stopped making progress, instead of leaving it to its walltime.

render_task.py starts this as a separate process (a Python thread inside Blender is no use: it waits
for Blender's lock while a frame renders, and was seen to deadlock Blender's render):

    python3 watchdog.py --pid PID --marker DIR/status/task-K.json [--factor F] [--min-seconds S]

The task's marker names the frame being rendered and when it started ("current"). A frame that runs
longer than `factor` times the slowest frame measured so far (this task's, or any task's of the job:
status/*.json), and at least `min-seconds`, has hung: Blender is stopped (TERM, then KILL), the marker
says why, and the frame is left missing, so recovery renders it again. Without any measured frame
there is nothing to compare with and the scheduler's walltime stays the limit. Exits when Blender does.
Stdlib only: it runs with the Python that runs Blender's scripts.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from jsonfile import write_json_atomic  # beside this file, as it runs from the scripts directory

POLL_S = 1.0  # is Blender still there
MARKER_EVERY_S = 5.0  # the task's own marker
JOB_MARKERS_EVERY_S = 600.0  # every marker of the job (thousands on a parallel filesystem)
GRACE_S = 15.0  # between TERM and KILL: Blender gets to flush its log
EXIT_CODE = 5  # in the marker: ended by the watchdog


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="watchdog.py")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--min-seconds", type=float, default=600.0)
    return parser.parse_args(argv)


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, ValueError):
        return {}  # being replaced right now: the next poll reads it
    return data if isinstance(data, dict) else {}


def slowest_frame(marker_path: str) -> float:
    """The longest measured frame of the job so far, in seconds (0 when none is measured)."""
    slowest = 0.0
    for path in glob.glob(os.path.join(os.path.dirname(marker_path), "*task-*.json")):
        for seconds in (read_json(path).get("timings") or {}).values():
            try:
                slowest = max(slowest, float(seconds))
            except (TypeError, ValueError):
                continue
    return slowest


def limit_for(slowest: float, factor: float, min_seconds: float) -> float | None:
    """How long a frame may run, or None (no measure yet: the walltime decides)."""
    return max(min_seconds, factor * slowest) if slowest > 0 else None


def overdue(marker: dict, limit: float | None, now: float) -> float:
    """Seconds the current frame has run when that is over the limit, else 0."""
    current = marker.get("current") or {}
    if limit is None or marker.get("state") != "running" or not current.get("started"):
        return 0.0
    running = now - float(current["started"])
    return running if running > limit else 0.0


def alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet collected by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            return stream.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal said it exists


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_S
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def record(marker_path: str, message: str) -> None:
    marker = read_json(marker_path)
    marker.update(state="failed", exit_code=EXIT_CODE, error=message, finished=time.time(), current=None)
    write_json_atomic(marker_path, marker)


PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_the_task(pid: int) -> bool:
    """Never outlive the Blender this watches (False: it is gone already). Stopping the task (scancel,
    the add-on's Abort: TERM to its process group) stops this too, even when whoever started Blender
    blocked or ignored those signals (children inherit both); and on Linux the kernel ends this process
    the moment Blender ends, even when Blender got its TERM before it started this one."""
    stops = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    for number in stops:
        signal.signal(number, signal.SIG_DFL)
    parent_death_signal(signal.SIGKILL)
    return os.getppid() == pid or alive(pid)


def parent_death_signal(number: int) -> None:
    """The signal the kernel sends this process when its parent ends (0: none). Linux only; elsewhere
    the poll notices a Blender that is gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, number)
        except (OSError, AttributeError):
            pass


def watch(args: argparse.Namespace) -> int:
    """Gentle on a shared filesystem: the task's own marker every few seconds, the job's other markers
    (for the slowest frame) only now and then."""
    if not die_with_the_task(args.pid):
        return 0
    slowest, job_read, marker_read = 0.0, float("-inf"), float("-inf")
    while alive(args.pid):
        now = time.monotonic()
        if now - job_read >= JOB_MARKERS_EVERY_S:
            slowest, job_read = slowest_frame(args.marker), now
        if now - marker_read < MARKER_EVERY_S:
            time.sleep(POLL_S)
            continue
        marker, marker_read = read_json(args.marker), now
        own = [float(s) for s in (marker.get("timings") or {}).values() if isinstance(s, (int, float))]
        slowest = max([slowest, *own])
        limit = limit_for(slowest, args.factor, args.min_seconds)
        running = overdue(marker, limit, time.time())
        if running:
            frame = (marker.get("current") or {}).get("frame")
            message = (f"frame {frame} made no progress: it has rendered for {running:.0f} s, more than "
                       f"{limit:.0f} s ({args.factor:g} x the slowest frame of this job, {slowest:.1f} s); "
                       "Blender was stopped so the frame can be rendered again")
            print(f"braas-hpc: watchdog: {message}", file=sys.stderr, flush=True)
            parent_death_signal(0)  # outlive the Blender it stops, long enough to say why in the marker
            stop(args.pid)
            record(args.marker, message)  # after Blender is gone: nothing writes the marker any more
            return 1
    return 0


def python_command() -> str:
    """A Python to run this file with: Blender's own (sys.executable, its bundled Python) when it is one,
    else python3 on PATH. Some Blender builds name the blender binary there, which must not be started."""
    if os.path.basename(sys.executable or "").startswith("python"):
        return sys.executable
    return shutil.which("python3") or ""


def start(marker_path: str, env: Mapping[str, str]) -> str:
    """Start watching this process; returns a line for the task's log saying how it is watched."""
    python = python_command()
    if not python:
        return "no watchdog (no Python found to run it): the walltime is the limit for a hung frame"
    factor = env.get("BRAAS_WATCHDOG_FACTOR", "10")
    min_seconds = env.get("BRAAS_WATCHDOG_MIN_SECONDS", "600")
    argv = [python, os.path.abspath(__file__), "--pid", str(os.getpid()), "--marker", marker_path,
            "--factor", factor, "--min-seconds", min_seconds]
    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True)
    except OSError as exc:
        return f"no watchdog ({exc}): the walltime is the limit for a hung frame"
    return f"watchdog: a frame may take {factor} x the slowest frame so far, at least {min_seconds} s"


if __name__ == "__main__":
    sys.exit(watch(parse_args(sys.argv[1:])))
