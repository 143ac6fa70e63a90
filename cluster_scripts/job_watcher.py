"""braas-hpc's job watcher on the login node: says at once when a frame lands or a job ends.

The client runs `python3 -c <this file> '<request JSON>'` over its kept connection and reads lines.
The request: {"jobs": {name: job directory}, "interval": seconds, "idle": seconds}. Every `interval`
the watcher looks at each job's out/ (non-empty frame_* files), status/ (task markers) and
summary.json, on the cluster's own file system: it never asks the scheduler. It prints one JSON
object per line:
  {"e": "frame", "job": name, "name": "frame_000001.png", "size": bytes}   a frame landed (or changed)
  {"e": "marker", "job": name, "task": "r1-task-3.json", "state": "done"}  a task's marker was written
  {"e": "summary", "job": name}                                          the finish step wrote its summary
  {"e": "ready"}                                 after the first look: everything already there was said
  {"e": "bye", "why": "idle" | "ended"}          the last line
It ends by itself when nothing changed for `idle` seconds, or once every job has its summary.

Python 3.6 or newer, standard library only: a login node's python3 can be that old.
"""

import json
import os
import re
import stat
import sys
import time

FRAME = re.compile(r"frame_[0-9]{1,12}\.[A-Za-z0-9]{1,8}\Z")
MARKER = re.compile(r"(r[0-9]{1,6}-)?task-[0-9]{1,9}\.json\Z")
MARKER_BYTES = 1024 * 1024
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\Z")
MAX_ENTRIES = 100000  # files looked at per directory per look: a directory flooded by someone is not read whole


def say(event):
    sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


def files_of(directory, pattern):
    """{name: (size, mtime_ns)} of the regular files named by `pattern` (not links: they are not the job's)."""
    found = {}
    try:
        with os.scandir(directory) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_ENTRIES:
                    break
                if not pattern.match(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found[entry.name] = (info.st_size, info.st_mtime_ns)
    except OSError:
        pass
    return found


def marker_state(path):
    try:  # not through a link, never blocking on a pipe put there since the look
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read(MARKER_BYTES).decode("utf-8"))
    except (OSError, ValueError):
        return "damaged"
    state = data.get("state") if isinstance(data, dict) else None
    return state if isinstance(state, str) and len(state) <= 32 else "damaged"


RACY_S = 2.0  # a directory changed this recently is read again: its time stamp may be too coarse to tell


class Job:
    def __init__(self, name, directory):
        self.name = name
        self.directory = directory
        self.frames = {}
        self.markers = {}
        self.summary = None
        self.stamps = {}

    def unchanged(self, directory):
        """Whether `directory` is as at the last look: its time stamp moves with every file renamed into
        it, so a job of thousands of frames costs one stat a look on a parallel file system, not thousands."""
        try:
            stamp = os.stat(directory).st_mtime_ns
        except OSError:
            stamp = None
        same = stamp is not None and self.stamps.get(directory) == stamp and time.time() * 1e9 - stamp > RACY_S * 1e9
        self.stamps[directory] = stamp
        return same

    def look(self):
        """Say what changed since the last look; whether anything did."""
        changed = False
        out = os.path.join(self.directory, "out")
        frames = self.frames if self.unchanged(out) else files_of(out, FRAME)
        for name, seen in sorted(frames.items()):
            if seen[0] > 0 and self.frames.get(name) != seen:
                say({"e": "frame", "job": self.name, "name": name, "size": seen[0]})
                changed = True
        self.frames = frames
        status = os.path.join(self.directory, "status")
        markers = self.markers if self.unchanged(status) else files_of(status, MARKER)
        for name, seen in sorted(markers.items()):
            if self.markers.get(name) != seen:
                say({"e": "marker", "job": self.name, "task": name,
                     "state": marker_state(os.path.join(self.directory, "status", name))})
                changed = True
        self.markers = markers
        summary = self.summary if self.unchanged(self.directory) else files_of(
            self.directory, re.compile(r"summary\.json\Z")).get("summary.json")
        if summary and summary[0] > 0 and summary != self.summary:
            say({"e": "summary", "job": self.name})
            changed = True
        self.summary = summary if summary and summary[0] > 0 else None
        return changed


def read_request(argv):
    if len(argv) != 2:
        raise ValueError("usage: job_watcher.py '<request JSON>'")
    request = json.loads(argv[1])
    jobs = request.get("jobs")
    if not isinstance(jobs, dict) or not jobs or len(jobs) > 10000:
        raise ValueError("no jobs to watch")
    for name, directory in jobs.items():
        if not JOB_NAME.match(name) or not isinstance(directory, str) or not directory.startswith("/"):
            raise ValueError("bad job " + repr(name))
    interval = float(request.get("interval", 0.5))
    idle = float(request.get("idle", 600))
    if not 0.05 <= interval <= 60 or not 1 <= idle <= 86400:
        raise ValueError("interval or idle out of range")
    return [Job(n, d) for n, d in sorted(jobs.items())], interval, idle


def main(argv):
    try:
        jobs, interval, idle = read_request(argv)
    except ValueError as error:
        say({"e": "error", "why": str(error)[:200]})
        return 2
    for job in jobs:
        job.look()
    say({"e": "ready"})
    last_change = time.monotonic()
    while True:
        if all(job.summary for job in jobs):
            say({"e": "bye", "why": "ended"})
            return 0
        if time.monotonic() - last_change > idle:
            say({"e": "bye", "why": "idle"})
            return 0
        time.sleep(interval)
        if any([job.look() for job in jobs]):  # a list: every job is looked at
            last_change = time.monotonic()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (BrokenPipeError, KeyboardInterrupt):  # the client went away
        sys.exit(0)
