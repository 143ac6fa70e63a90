"""Slurm: sbatch arrays, one batched `sacct` for many jobs, scancel of whole arrays."""

from __future__ import annotations

import re

from ..errors import SchedulerError
from ..jobs import JobPaths, JobSpec
from ..presets import Preset
from .base import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    TIMEOUT,
    UNKNOWN,
    Scheduler,
    TaskState,
    walltime_hms,
)

_STATE_MAP = {
    "PENDING": PENDING, "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING, "REQUEUE_FED": PENDING,
    "CONFIGURING": RUNNING, "RUNNING": RUNNING, "COMPLETING": RUNNING, "SUSPENDED": RUNNING,
    "RESIZING": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING,
    "COMPLETED": COMPLETED,
    "FAILED": FAILED, "NODE_FAIL": FAILED, "OUT_OF_MEMORY": FAILED, "BOOT_FAIL": FAILED,
    "PREEMPTED": FAILED, "DEADLINE": TIMEOUT, "TIMEOUT": TIMEOUT,
    "CANCELLED": CANCELLED, "REVOKED": CANCELLED,
}
_SUBMITTED = re.compile(r"^(\d+)(;\S+)?$")
# Slurm job names: keep them short and printable so squeue columns and e-mails stay readable.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SlurmScheduler(Scheduler):
    name = "slurm"

    def directives(self, spec: JobSpec, preset: Preset, paths: JobPaths) -> list[str]:
        partition = preset.partition_gpu if spec.device == "GPU" else preset.partition_cpu
        array = f"1-{len(spec.tasks)}" + (f"%{spec.max_parallel}" if spec.max_parallel else "")
        lines = [f"--job-name={_NAME_UNSAFE.sub('_', spec.name)[:64]}"]
        if preset.account:
            lines.append(f"--account={preset.account}")
        if partition:
            lines.append(f"--partition={partition}")
        lines += [
            f"--array={array}",
            f"--time={walltime_hms(spec.walltime_min)}",
            "--nodes=1",
            "--ntasks=1",
            f"--output={paths.log_dir}/task-%a.log",
        ]
        if spec.device == "GPU":
            lines.append("--gpus=1")
        return [f"#SBATCH {line}" for line in lines]

    def submit_argv(self, script: str) -> list[str]:
        return ["sbatch", "--parsable", script]

    def parse_submit(self, stdout: str) -> str:
        last = stdout.strip().splitlines()[-1:] or [""]
        match = _SUBMITTED.match(last[0].strip())
        if not match:
            raise SchedulerError(f"sbatch gave no job id; it said: {stdout.strip()!r}")
        return match.group(1)

    def query_argv(self, job_ids: list[str]) -> list[str]:
        # -X: allocations only (array tasks one line each); wide State so "CANCELLED by N" is whole.
        return ["sacct", "--parsable2", "--noheader", "-X", "-o", "JobID,State%40,ExitCode",
                "-j", ",".join(job_ids)]

    def parse_query(self, stdout: str) -> list[TaskState]:
        states = []
        for line in stdout.splitlines():
            fields = line.strip().split("|")
            if len(fields) < 3 or not fields[0]:
                continue
            job_id, _, task = fields[0].partition("_")
            raw = fields[1].strip()
            word = raw.split()[0].rstrip("+") if raw else ""
            states.append(TaskState(job_id, task, _STATE_MAP.get(word, UNKNOWN), raw, fields[2]))
        return states

    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["scancel", *job_ids]
