"""Slurm: sbatch arrays, one batched `sacct` for many jobs (squeue when accounting is off, and for a task sacct
calls PREEMPTED), scancel."""

from __future__ import annotations

from collections.abc import Sequence

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
    Round,
    Scheduler,
    TaskState,
    job_name,
    scheduler_partition,
    walltime_hms,
)

# Every state sacct and squeue print (long and short forms), normalised.
STATES = {
    "PENDING": PENDING, "PD": PENDING, "REQUEUED": PENDING, "RQ": PENDING, "REQUEUE_HOLD": PENDING,
    "REQUEUE_FED": PENDING, "RESV_DEL_HOLD": PENDING, "SPECIAL_EXIT": PENDING, "SE": PENDING,
    "CONFIGURING": RUNNING, "CF": RUNNING, "RUNNING": RUNNING, "R": RUNNING, "COMPLETING": RUNNING, "CG": RUNNING,
    "SUSPENDED": RUNNING, "S": RUNNING, "RESIZING": RUNNING, "STAGE_OUT": RUNNING, "SO": RUNNING,
    "SIGNALING": RUNNING, "STOPPED": RUNNING, "ST": RUNNING,
    "COMPLETED": COMPLETED, "CD": COMPLETED,
    "FAILED": FAILED, "F": FAILED, "NODE_FAIL": FAILED, "NF": FAILED, "OUT_OF_MEMORY": FAILED, "OOM": FAILED,
    "BOOT_FAIL": FAILED, "BF": FAILED, "PREEMPTED": FAILED, "PR": FAILED,
    "DEADLINE": TIMEOUT, "DL": TIMEOUT, "TIMEOUT": TIMEOUT, "TO": TIMEOUT,
    "CANCELLED": CANCELLED, "CA": CANCELLED, "REVOKED": CANCELLED, "RV": CANCELLED,
}
# Runs the sacct command given ("$@"; the ids are its last word). sacct says PREEMPTED both for a task that
# preemption cancelled and, for a few seconds, for one Slurm has requeued (until the next run's record is
# written; seen with Slurm 22.05). Only then the controller's queue is asked too: it lists a requeued task
# (PENDING) and not a cancelled one. One call either way.
_QUERY = ('out=$("$@") || exit\n'
          'printf "%s\\n" "$out"\n'
          'case "$out" in *"|PREEMPTED"*) for ids; do :; done; printf "@@queue\\n"\n'
          '  squeue --noheader -r -o "%i|%T|%r" -j "$ids" 2>/dev/null ;; esac\n'
          'exit 0')


def _parse_lines(text: str) -> list[TaskState]:
    """'JobID|State|ExitCode-or-Reason' lines (sacct and squeue) as task states."""
    states = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3 or not fields[0]:
            continue
        job_id, _, task = fields[0].partition("_")
        states.append(TaskState(job_id, task, state_of(fields[1]), fields[1].strip(), fields[2]))
    return states


def state_of(raw: str) -> str:
    """'CANCELLED by 1000' -> CANCELLED; a truncated 'CANCELLED+' too; unknown words -> UNKNOWN."""
    word = raw.split()[0].rstrip("+") if raw.strip() else ""
    return STATES.get(word, UNKNOWN)


class SlurmScheduler(Scheduler):
    name = "slurm"
    label = "Slurm"
    prefix = "#SBATCH"
    submit_id = r"(?P<id>\d+)(;\S+)?"  # --parsable: "42", or "42;cluster" on a federation
    submit_program = "sbatch"
    index_variable = "SLURM_ARRAY_TASK_ID"
    job_variable = "SLURM_JOB_ID"
    thread_variables = ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")
    commands = ("sbatch", "squeue", "sacct")
    gpu_requests = ("gpus", "gres", "none")  # --gpus=N, --gres=gpu:N, or the node comes with its GPUs

    def directive_pairs(self, spec: JobSpec, preset: Preset, paths: JobPaths, round_: Round) -> list[tuple[str, str]]:
        throttle = f"%{spec.max_parallel}" if 0 < spec.max_parallel < round_.tasks else ""
        array = self.uses_array(preset, round_)
        pairs = [("--job-name", job_name(spec.name))]
        partition = scheduler_partition(spec, preset)
        for name, value in (("--account", spec.account), ("--partition", partition), ("--qos", spec.qos)):
            if value:
                pairs.append((name, value))
        if array:
            pairs.append(("--array", f"1-{round_.tasks}{throttle}"))
        pairs += [
            ("--time", walltime_hms(spec.walltime_min)),
            ("--nodes", "1"),
            ("--ntasks", "1"),
            # The task's own log is written by the script; this file only catches Slurm's messages.
            ("--output", f"{paths.log_dir}/slurm-{round_.marker_prefix}{'%A_%a' if array else '%j'}.out"),
        ]
        if spec.whole_node:
            pairs.append(("--exclusive", ""))
        elif spec.cpus:
            pairs.append(("--cpus-per-task", str(spec.cpus)))
        if spec.gpus and self.gpu_request(preset) == "gpus":
            pairs.append(("--gpus", str(spec.gpus)))
        elif spec.gpus and self.gpu_request(preset) == "gres":
            pairs.append(("--gres", f"gpu:{spec.gpus}"))
        if spec.memory_gb:
            pairs.append(("--mem", f"{spec.memory_gb}G"))
        if spec.email:
            pairs += [("--mail-user", spec.email), ("--mail-type", "END,FAIL")]
        if round_.exclude_nodes:
            pairs.append(("--exclude", ",".join(round_.exclude_nodes)))
        if preset.partition(spec.partition).preemptible:
            # Preempted, the task waits in the queue and runs again (skipping its finished frames); without
            # it a site whose JobRequeue is 0 cancels it, and the frames wait for a client to resubmit them.
            pairs.append(("--requeue", ""))
        return pairs

    def format_directive(self, name: str, value: str) -> str:
        return f"{name}={value}" if value else name

    def after_argv(self, job_ids: Sequence[str]) -> list[str]:
        # An array id without an index stands for every task of the array.
        return [f"--dependency=afterany:{':'.join(job_ids)}"]

    def exclude_argv(self, nodes: Sequence[str]) -> list[str]:
        return [f"--exclude={','.join(nodes)}"] if nodes else []

    def submit_argv(self, script: str, task: int | None = None, options: Sequence[str] = ()) -> list[str]:
        return ["sbatch", "--parsable", *options, script, *([str(task)] if task else [])]

    def query_argv(self, job_ids: list[str]) -> list[str]:
        # -X: allocations only (each array task one line); a wide State so "CANCELLED by N" is whole.
        sacct = ["sacct", "--parsable2", "--noheader", "-X", "-o", "JobID,State%40,ExitCode", "-j", ",".join(job_ids)]
        return ["sh", "-c", _QUERY, "sh", *sacct]

    def parse_query(self, stdout: str) -> list[TaskState]:
        """sacct's lines; a PREEMPTED task the queue still lists (requeued) takes the queue's line."""
        accounted, _, queued = stdout.partition("@@queue\n")
        live = {(s.job_id, s.task): s for s in _parse_lines(queued)}
        return [live.get((s.job_id, s.task), s) if s.raw == "PREEMPTED" else s for s in _parse_lines(accounted)]

    def fallback_query_argv(self, job_ids: list[str]) -> list[str]:
        # Without accounting only the queue knows: -r lists array tasks one per line.
        return ["squeue", "--noheader", "-r", "-o", "%i|%T|%r", "-j", ",".join(job_ids)]

    def parse_fallback(self, stdout: str) -> list[TaskState]:
        return self.parse_query(stdout)

    def task_log_patterns(self, task: int) -> list[str]:
        return [f"slurm-*_{task}.out"]  # --output=slurm-%A_%a.out, every round's

    def step_argv(self, job_id: str, argv: Sequence[str]) -> list[str]:
        # --overlap: beside the job's own step, which holds the allocation.
        return ["srun", "--overlap", f"--jobid={job_id}", "--nodes=1", "--ntasks=1", *argv]

    def says_unknown_id(self, stderr: str) -> bool:
        return "Invalid job id" in stderr  # squeue, when none of the ids is in the queue any more

    def live_query_argv(self, job_ids: list[str]) -> list[str]:
        return self.fallback_query_argv(job_ids)  # squeue: the controller's own, current view

    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        # An array id without a task index cancels every task of the array, pending or running.
        return ["scancel", *job_ids]

    def task_id(self, array_id: str, task: int) -> str:
        return f"{array_id}_{task}"
