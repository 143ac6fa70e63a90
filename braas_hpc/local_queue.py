"""The `local` preset's queue: jobs on this computer run detached, one task at a time, in order.

    python3 local_queue.py DIR submit [--after ID,ID] [--task N] SCRIPT   -> prints the new job's id
    python3 local_queue.py DIR query ID...                                -> one JSON line per task
    python3 local_queue.py DIR cancel ID[.TASK]...                        (ID.TASK: that task alone)
    python3 local_queue.py DIR work                                       (started by the others)

A batch script asks for an array with a `#BRAAS-LOCAL --array=1-N` line; each task runs as
`bash SCRIPT` with BRAAS_TASK_ID and BRAAS_JOB_ID set, in its own process group (a cancel stops the
Blender it started too). One worker runs the queue and leaves when it is empty; a submission starts one
when none runs. The worker is detached from whoever started it, so closing Blender or the terminal does
not stop a render. A task left running by a worker that died (the computer restarted) is FAILED, as a
cluster reports a node that went away, and the queue goes on.

Locking: `queue.lock` guards the job files for a moment at a time; the worker holds `worker.lock` as
long as it lives, and gives it up only while holding `queue.lock` and seeing no work, so a submission
never lands in a queue whose worker is just leaving. POSIX only (flock, process groups).

This file is run on its own by path (also by Blender's bundled Python): standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"
ENDED = {COMPLETED, FAILED, CANCELLED}
ARRAY_LINE = re.compile(r"^#BRAAS-LOCAL\s+--array=1-(\d+)\s*$", re.M)
KILL_AFTER_S = 10.0  # a cancelled task that ignores SIGTERM this long gets SIGKILL
FORGET_AFTER_S = 30 * 24 * 3600
USAGE = "usage: local_queue.py DIR submit [--after IDS] [--task N] SCRIPT | query ID... | cancel ID... | work"


class QueueError(Exception):
    """Bad use of the queue: said on stderr, exit status 2."""


class Queue:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.jobs = directory / "jobs"

    def prepare(self) -> None:
        self.jobs.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.chmod(0o700)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.dir / "queue.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def job_file(self, job_id: str) -> Path:
        if not job_id.isdigit():
            raise QueueError(f"not a job id: {job_id!r}")
        return self.jobs / f"{int(job_id)}.json"

    def read(self, job_id: str) -> dict | None:
        try:
            return json.loads(self.job_file(job_id).read_text())
        except FileNotFoundError:
            return None

    def write(self, job: dict) -> None:
        path = self.job_file(str(job["id"]))
        temp = path.with_suffix(".part")
        temp.write_text(json.dumps(job))
        temp.replace(path)  # a reader sees the old state or the new one, never half of one

    def ids(self) -> list[str]:
        return sorted((p.stem for p in self.jobs.glob("*.json") if p.stem.isdigit()), key=int)

    def next_id(self) -> str:
        counter = self.dir / "last-id"
        last = int(counter.read_text() or 0) if counter.is_file() else 0
        counter.write_text(str(last + 1))
        return str(last + 1)

    # The worker's lock: held for its whole life, so "is a worker running" is "is the lock taken".
    def worker_running(self) -> bool:
        with open(self.dir / "worker.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    def start_worker(self) -> None:
        with open(self.dir / "worker.log", "ab") as log:
            subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(self.dir), "work"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                             close_fds=True, cwd=self.dir)

    def settle(self) -> None:
        """Under the queue lock: with no worker alive, tasks it left running failed, and queued work gets
        a worker again (after a restart, the next command resumes the queue)."""
        self.forget_old()
        if self.worker_running():
            return
        waiting = False
        for job_id in self.ids():
            job = self.read(job_id)
            if job is None:
                continue
            states = job["states"]
            interrupted = [task for task, state in states.items() if state == RUNNING]
            for task in interrupted:
                states[task] = FAILED
                job["raw"][task] = "interrupted: the local runner stopped (restart, or killed)"
            if interrupted:
                self.write(job)
            waiting = waiting or PENDING in states.values()
        if waiting:
            self.start_worker()

    def forget_old(self) -> None:
        """Jobs ended longer ago than FORGET_AFTER_S leave the queue (braas-hpc stops asking about a job once
        it has ended), so the queue stays small however long it is used."""
        cutoff = time.time() - FORGET_AFTER_S
        for path in self.jobs.glob("*.json"):
            try:
                if path.stat().st_mtime < cutoff and set(json.loads(path.read_text())["states"].values()) <= ENDED:
                    path.unlink()
            except (OSError, ValueError, KeyError):
                continue


def submit(queue: Queue, args: list[str]) -> str:
    after: list[str] = []
    task = ""
    while args and args[0] in ("--after", "--task"):
        if len(args) < 2:
            raise QueueError(f"{args[0]} needs a value")
        flag, value, args = args[0], args[1], args[2:]
        if flag == "--after":
            after = [i for i in value.split(",") if i]
        else:
            task = value
    if len(args) != 1:
        raise QueueError(USAGE)
    script = Path(args[0]).resolve()
    if not script.is_file():
        raise QueueError(f"no such script: {args[0]}")
    if task and not task.isdigit():
        raise QueueError(f"not a task number: {task!r}")
    found = ARRAY_LINE.search(script.read_text(errors="replace"))
    tasks = [str(t) for t in range(1, int(found.group(1)) + 1)] if found and not task else [task or ""]
    for job_id in after:
        queue.job_file(job_id)  # refuses a malformed id
    with queue.locked():
        job_id = queue.next_id()
        queue.write({"id": int(job_id), "script": str(script), "after": after, "submitted": time.time(),
                     "states": {t: PENDING for t in tasks}, "raw": {}, "exit": {}, "pgid": 0})
        if not queue.worker_running():
            queue.start_worker()
    return job_id


def query(queue: Queue, ids: list[str]) -> list[dict]:
    with queue.locked():
        queue.settle()
        jobs = [queue.read(job_id) for job_id in ids]
    lines = []
    for job in jobs:
        if job is None:
            continue  # unknown here: as a scheduler that forgot it, the frames decide
        for task, state in job["states"].items():
            lines.append({"job": str(job["id"]), "task": task, "state": state,
                          "raw": job["raw"].get(task, state), "exit": job["exit"].get(task, "")})
    return lines


def cancel(queue: Queue, ids: list[str]) -> None:
    """Every task of each job, or one task (ID.TASK: a group moved its frames to another cluster)."""
    with queue.locked():
        for named in ids:
            job_id, _, only = named.partition(".")
            job = queue.read(job_id)
            if job is None:
                continue
            states = job["states"]
            for task, state in states.items():
                if (not only or task == only) and state in (PENDING, RUNNING):
                    states[task] = CANCELLED
                    job["raw"][task] = "cancelled"
                    if state == RUNNING and job["pgid"]:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(job["pgid"], signal.SIGTERM)
            queue.write(job)


def _runnable(queue: Queue) -> tuple[dict, str] | None:
    """The first pending task of the oldest job whose `after` jobs have all ended."""
    for job_id in queue.ids():
        job = queue.read(job_id)
        if job is None:
            continue
        pending = [t for t, s in job["states"].items() if s == PENDING]
        if not pending:
            continue
        before = [queue.read(i) for i in job["after"]]
        if all(b is None or set(b["states"].values()) <= ENDED for b in before):
            return job, pending[0]
    return None


def _run_task(queue: Queue, job: dict, task: str) -> subprocess.Popen:
    """Start the task (under the queue lock, so a cancel always finds its process group), wait for it."""
    env = {**os.environ, "BRAAS_JOB_ID": str(job["id"])}
    env.pop("BRAAS_TASK_ID", None)
    if task:
        env["BRAAS_TASK_ID"] = task
    process = subprocess.Popen(["bash", job["script"]], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               cwd=str(Path(job["script"]).parent))
    job["states"][task], job["pgid"] = RUNNING, process.pid
    queue.write(job)
    return process


def work(queue: Queue) -> None:
    with open(queue.dir / "worker.lock", "a") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another worker runs the queue
        while True:
            with queue.locked():
                found = _runnable(queue)
                if found is None:
                    fcntl.flock(held, fcntl.LOCK_UN)  # leaving: only while nobody can add work unseen
                    return
                job, task = found
                process = _run_task(queue, job, task)
            _wait(queue, str(job["id"]), task, process)


def _wait(queue: Queue, job_id: str, task: str, process: subprocess.Popen) -> None:
    cancelled_at = 0.0
    while True:
        try:
            code = process.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            job = queue.read(job_id)
            if job and job["states"].get(task) == CANCELLED:
                cancelled_at = cancelled_at or time.monotonic()
                if time.monotonic() - cancelled_at > KILL_AFTER_S:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
    with queue.locked():
        job = queue.read(job_id)
        if job is None:
            return
        if job["states"].get(task) == RUNNING:  # a cancel already said CANCELLED: that stays
            job["states"][task] = COMPLETED if code == 0 else FAILED
            job["raw"][task] = f"exit {code}"
        job["exit"][task] = str(code)
        job["pgid"] = 0
        queue.write(job)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    os.umask(0o077)
    queue = Queue(Path(argv[0]))
    verb, args = argv[1], argv[2:]
    try:
        queue.prepare()
        if verb == "submit":
            print(submit(queue, args))
        elif verb == "query":
            for line in query(queue, args):
                print(json.dumps(line))
        elif verb == "cancel":
            cancel(queue, args)
        elif verb == "work" and not args:
            work(queue)
        else:
            raise QueueError(USAGE)
    except QueueError as error:
        print(f"local queue: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
