"""A job's logs on the cluster: the last lines of each, read in one remote call (the panel's "Job Info
and Logs" and `braas-hpc logs`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .context import JobContext
from .frames import format_frames
from .jobs import JobPaths
from .registry import JobRecord
from .schedulers import Scheduler
from .transport import Transport

TAIL_LINES = 60
# Lines are asked for, but a log that never ends a line is one line: what comes back is capped per log
# (cut on the cluster, one byte more so a cut shows) and for the whole answer.
TAIL_BYTES = 256 * 1024
ANSWER_BYTES = 16 * 1024 * 1024

# "<name>\0<its last N lines, at most B+1 bytes>\0" for each log of the job directory's log/ matching
# one of the patterns, at most A bytes in all.
_TAILS_SCRIPT = r"""
cd "$1" 2>/dev/null || exit 0
n=$2 b=$3 a=$4; shift 4
for pattern in "$@"; do
  for f in $pattern; do
    [ -f "$f" ] || continue
    # a NUL in a log would split the answer
    printf '%s\0' "$f"; tail -n "$n" -- "$f" | tail -c "$((b + 1))" | tr -d '\000'; printf '\0'
  done
done | head -c "$a"
exit 0
"""


def patterns_for(task: int | None, scheduler: Scheduler | None = None) -> list[str]:
    """Globs for the logs of one array task (every round's, and the scheduler's own output of it), or of
    everything. Task numbers only: nothing the user types reaches the remote glob."""
    if task is None:
        return ["*.log", "*.out"]
    return [f"task-{task}.log", f"r*-task-{task}.log", *(scheduler.task_log_patterns(task) if scheduler else [])]


@dataclass(frozen=True)
class JobLogs:
    record: JobRecord
    tails: dict[str, str]  # log name -> its last lines, in name order
    lines: int

    def header(self) -> list[str]:
        record, spec = self.record, self.record.spec
        return [f"Job {record.name} on {record.preset}", f"state: {record.state}",
                f"created: {time.strftime('%Y-%m-%d %H:%M', time.localtime(record.created))}",
                f"scheduler ids: {', '.join(record.scheduler_ids) or '-'}", f"scene: {spec.scene}",
                f"frames: {format_frames(spec.frames)} in {len(spec.tasks)} task(s) of {spec.chunk}",
                f"device: {spec.device} ({spec.cycles_device}), partition: {spec.partition or '-'}, "
                f"walltime: {spec.walltime_min} min, resubmissions: {record.rounds}",
                f"on the cluster: {JobPaths(record.remote_root, record.name).job_dir}"]

    def text(self) -> str:
        lines = [*self.header(), ""]
        for name, tail in self.tails.items():
            lines += [f"==== {name} (last {self.lines} lines) ====", tail.rstrip(), ""]
        if not self.tails:
            lines.append("(no logs yet: no task has started)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {"job": self.record.name, "state": self.record.state, "lines": self.lines, "logs": self.tails}


async def read_tails(transport: Transport, log_dir: str, task: int | None, lines: int,
                     scheduler: Scheduler | None = None) -> dict[str, str]:
    """Log name -> its last `lines` lines, in name order; {} when the directory does not exist yet."""
    done = await transport.run(["sh", "-c", _TAILS_SCRIPT, "sh", log_dir, str(lines), str(TAIL_BYTES),
                                str(ANSWER_BYTES), *patterns_for(task, scheduler)], timeout=120, check=False)
    parts = done.stdout.split("\0")
    tails = {log: _capped(text) for log, text in zip(parts[0::2], parts[1::2], strict=False) if log}
    if len(done.stdout.encode()) >= ANSWER_BYTES and tails:
        last = max(tails)
        tails[last] += f"\n[braas-hpc: the logs were cut at {ANSWER_BYTES >> 20} MiB in all: ask for one task]"
    return dict(sorted(tails.items()))


def _capped(text: str) -> str:
    if len(text.encode()) <= TAIL_BYTES:
        return text
    kept = text.encode()[-TAIL_BYTES:].decode(errors="replace")
    return f"[braas-hpc: cut to the last {TAIL_BYTES >> 10} KiB of these lines]\n{kept}"


async def job_logs(job: JobContext, task: int | None = None, lines: int = TAIL_LINES) -> JobLogs:
    lines = max(1, lines)
    return JobLogs(job.record, await read_tails(job.transport, job.paths.log_dir, task, lines, job.scheduler), lines)
