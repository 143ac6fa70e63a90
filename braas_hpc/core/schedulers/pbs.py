"""PBS Pro (ALCF Polaris and Aurora): qsub arrays with -J, `qstat -x -f -F json -t` for many jobs, qdel."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

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
    Round,
    Scheduler,
    TaskState,
    job_name,
    scheduler_partition,
    walltime_hms,
)

# job_state letters. B: an array has begun; X: a subjob has finished; F: finished (seen with -x).
_LIVE = {"Q": PENDING, "H": PENDING, "W": PENDING, "T": PENDING, "R": RUNNING, "E": RUNNING, "B": RUNNING,
         "S": RUNNING, "U": RUNNING, "M": UNKNOWN}
_ENDED = frozenset({"X", "F"})
# Exit_status of ended jobs: PBS's own negative codes, and 256+signal for a killed job.
_KILLED = frozenset({"271", "265", "-11"})  # SIGTERM (qdel), SIGKILL, JOB_EXEC_KILL_...
_WALLTIME = frozenset({"-29"})  # JOB_EXEC_KILL_WALLTIME
_ID = re.compile(r"^(\d+)(\[(\d*)\])?(\.\S+)?$")


def state_of(job_state: str, exit_status: str | None) -> str:
    if job_state in _ENDED:
        if exit_status is None or exit_status == "":
            return UNKNOWN if job_state == "X" else COMPLETED
        if exit_status == "0":
            return COMPLETED
        if exit_status in _WALLTIME:
            return TIMEOUT
        if exit_status in _KILLED:
            return CANCELLED
        return FAILED
    return _LIVE.get(job_state, UNKNOWN)


def base_id(job_id: str) -> str:
    """'123[].server', '123[4].server', '123.server' -> '123'."""
    match = _ID.match(job_id.strip())
    return match.group(1) if match else job_id


class PBSScheduler(Scheduler):
    name = "pbs"
    label = "PBS Pro"
    prefix = "#PBS"
    index_variable = "PBS_ARRAY_INDEX"
    job_variable = "PBS_JOBID"
    thread_variables = ("NCPUS",)
    commands = ("qsub", "qstat", "qdel")
    gpu_requests = ("ngpus", "none")  # select=1:ngpus=N, or the node comes with its GPUs

    def directive_pairs(self, spec: JobSpec, preset: Preset, paths: JobPaths, round_: Round) -> list[tuple[str, str]]:
        name = job_name(spec.name, letter_first=True)  # PBS Pro allows 236 characters
        pairs = [("-N", name)]
        if spec.account:
            pairs.append(("-A", spec.account))
        if queue := scheduler_partition(spec, preset):
            pairs.append(("-q", queue))
        chunk = "select=1"
        if spec.cpus and not spec.whole_node:
            chunk += f":ncpus={spec.cpus}"
        if spec.gpus and self.gpu_request(preset) == "ngpus":
            chunk += f":ngpus={spec.gpus}"
        if spec.memory_gb:
            chunk += f":mem={spec.memory_gb}gb"
        pairs += [("-l", chunk), ("-l", f"walltime={walltime_hms(spec.walltime_min)}")]
        if self.uses_array(preset, round_):
            throttle = f"%{spec.max_parallel}" if 0 < spec.max_parallel < round_.tasks else ""
            pairs += [("-J", f"1-{round_.tasks}{throttle}"), ("-r", "y")]
        elif preset.partition(spec.partition).preemptible:
            pairs.append(("-r", "y"))  # rerunnable (PBS's default, unless the site changed it): requeued when preempted
        pairs += [("-j", "oe"), ("-o", f"{paths.log_dir}/pbs-{round_.marker_prefix}{name}.log")]
        if spec.email:
            pairs += [("-M", spec.email), ("-m", "ae")]
        return pairs

    def format_directive(self, name: str, value: str) -> str:
        return f"{name} {value}" if value else name

    def uses_array(self, preset: Preset, round_: Round) -> bool:
        # PBS Pro arrays need two or more indices; a one-task job gets its index through -v.
        return preset.arrays and round_.tasks >= 2

    def after_argv(self, job_ids: Sequence[str]) -> list[str]:
        # Ids as qsub printed them: '123[].server' waits for every subjob of the array.
        return ["-W", f"depend=afterany:{':'.join(job_ids)}"]

    def submit_argv(self, script: str, task: int | None = None, options: Sequence[str] = ()) -> list[str]:
        single = ["-v", f"BRAAS_TASK_ID={task}"] if task else []
        return ["qsub", *single, *options, script]

    def parse_submit(self, stdout: str) -> str:
        last = stdout.strip().splitlines()[-1:] or [""]
        if not _ID.match(last[0].strip()):
            raise SchedulerError(f"qsub gave no job id; it said: {stdout.strip()!r}")
        return last[0].strip()

    def query_argv(self, job_ids: list[str]) -> list[str]:
        # -x: finished jobs too; -t: array subjobs; JSON so no field is ever truncated.
        return ["qstat", "-x", "-f", "-F", "json", "-t", *job_ids]

    def parse_query(self, stdout: str) -> list[TaskState]:
        try:
            jobs = json.loads(stdout or "{}").get("Jobs", {})
        except json.JSONDecodeError as exc:
            raise SchedulerError(f"qstat printed no JSON: {stdout[:200]!r}") from exc
        states = []
        for job_id, info in jobs.items():
            match = _ID.match(job_id)
            if not match:
                continue
            is_array_parent = match.group(2) is not None and match.group(3) == ""
            if is_array_parent:
                continue  # its subjobs (-t) carry the real states
            exit_status = info.get("Exit_status")
            letter = str(info.get("job_state", ""))
            raw = f"{letter} (Exit_status {exit_status})" if exit_status is not None else letter
            states.append(TaskState(match.group(1), match.group(3) or "", state_of(letter, None if exit_status is None
                                    else str(exit_status)), raw, "" if exit_status is None else str(exit_status)))
        return states

    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        # Ids are kept as qsub printed them: '123[].server' deletes every subjob of the array.
        return ["qdel", *job_ids]

    def job_key(self, job_id: str) -> str:
        return base_id(job_id)
