"""PBS Pro (ALCF Polaris and Aurora): qsub arrays with -J, `qstat -x -f -F json -t` for many jobs, qdel."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..jobs import JobPaths, JobSpec
from ..presets import Preset
from ._qstat_json import ENDED, SALVAGED, UNREADABLE, JobBlock, read_jobs
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

# job_state letters (pbs_job_attributes(7B)) of a job that is still to end. B: an array has begun (its
# subjobs carry the real states); E: exiting, cleaning up after its run; S/U: suspended after it started,
# keeping its place; M: moved to another server, which this one cannot follow.
_LIVE = {"Q": PENDING, "H": PENDING, "W": PENDING, "T": PENDING, "R": RUNNING, "E": RUNNING, "B": RUNNING,
         "S": RUNNING, "U": RUNNING, "M": UNKNOWN}
# ENDED: X, a subjob that has ended while its array runs on; F, finished (a job, an array, or a subjob of a
# finished array).
# Exit_status (src/include/job.h): below 0 PBS's own JOB_EXEC_* codes, 0-255 the script's, 256+N killed by
# signal N. These negative codes put the job back in the queue to run again: not an end.
_REQUEUED = {-3: "JOB_EXEC_RETRY", -11: "JOB_EXEC_RERUN", -12: "JOB_EXEC_CHKP", -14: "JOB_EXEC_RERUN_SIS_FAIL",
             -15: "JOB_EXEC_QUERST", -16: "JOB_EXEC_FAILHOOK_RERUN", -18: "JOB_EXEC_HOOK_RERUN",
             -20: "JOB_EXEC_RERUN_MS_FAIL"}
_EXIT_NAMES = {**_REQUEUED, -1: "JOB_EXEC_FAIL1", -2: "JOB_EXEC_FAIL2", -4: "JOB_EXEC_INITABT",
               -5: "JOB_EXEC_INITRST", -6: "JOB_EXEC_INITRMG", -7: "JOB_EXEC_BADRESRT", -10: "JOB_EXEC_FAILUID",
               -13: "JOB_EXEC_FAIL_PASSWORD", -17: "JOB_EXEC_FAILHOOK_DELETE", -19: "JOB_EXEC_HOOK_DELETE",
               -21: "JOB_EXEC_FAIL_SECURITY", -22: "JOB_EXEC_HOOKERROR", -23: "JOB_EXEC_FAIL_KRB5",
               -24: "JOB_EXEC_KILL_NCPUS_BURST", -25: "JOB_EXEC_KILL_NCPUS_SUM", -26: "JOB_EXEC_KILL_VMEM",
               -27: "JOB_EXEC_KILL_MEM", -28: "JOB_EXEC_KILL_CPUT", -29: "JOB_EXEC_KILL_WALLTIME",
               -30: "JOB_EXEC_JOINJOB"}
_WALLTIME = -29
_SIGNALLED = 256  # Exit_status 256+N: the job's top process was killed by signal N
_QDEL_SIGNALS = frozenset({15, 9})  # qdel sends SIGTERM, then SIGKILL after the kill delay
# substate of a finished job: 91 deleted (qdel), 92 finished, 93 failed (killed by PBS: a limit, a node).
_DELETED, _KILLED_BY_PBS = 91, 93
_SUBSTATE_WORDS = {_DELETED: "; deleted", _KILLED_BY_PBS: "; ended by PBS: a limit or a node"}
_ID = re.compile(r"^(\d+)(\[(\d*)\])?(\.\S+)?$")


def _number(value: object) -> int | None:
    """An Exit_status or substate as printed (a JSON number, or a string of one); None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip() if isinstance(value, str | float) else ""
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def state_of(job_state: str, exit_status: object = None, substate: object = None, array_done: bool = True) -> str:
    """A job_state letter (with the Exit_status and substate PBS printed beside it) as a normalised state.

    `array_done`: for a subjob, whether its array has finished (nothing in it runs again); a plain job
    has none. Examples: ("R",) RUNNING; ("F", 0) COMPLETED; ("X",) CANCELLED, deleted before it ran;
    ("F", -29) TIMEOUT; ("F", 271) CANCELLED (qdel); ("X", -11, array_done=False) PENDING, PBS runs it again.
    """
    letter = str(job_state).strip()[:1]
    if letter not in ENDED:
        return _LIVE.get(letter, UNKNOWN)
    if exit_status is None or exit_status == "":
        return CANCELLED  # no Exit_status: it never ran (deleted while queued, by a user or by PBS)
    code = _number(exit_status)
    if code is None:
        return UNKNOWN
    return _ended(code, _number(substate), requeued=letter == "X" and not array_done)


def _ended(code: int, substate: int | None, requeued: bool) -> str:
    if code == 0:
        return COMPLETED
    if code in _REQUEUED and requeued:
        return PENDING  # PBS put the subjob back in its array's queue: it runs again
    if substate == _DELETED:
        return CANCELLED  # deleted, however its script answered the signal
    if code == _WALLTIME:
        return TIMEOUT
    if code - _SIGNALLED in _QDEL_SIGNALS and substate != _KILLED_BY_PBS:
        return CANCELLED
    return FAILED


def exit_words(code: object) -> str:
    """What an Exit_status means, for the user: 'Exit_status 271: killed by signal 15'."""
    number = _number(code)
    if number is None:
        return f"Exit_status {code!r}: not a number"
    if number in _EXIT_NAMES:
        return f"Exit_status {number}: {_EXIT_NAMES[number]}"
    if number > _SIGNALLED:
        return f"Exit_status {number}: killed by signal {number - _SIGNALLED}"
    return f"Exit_status {number}"


def _is_array(job_id: str) -> bool:
    """'123[].server' is an array's own line; '123[4].server' a subjob; '123.server' a plain job."""
    match = _ID.match(job_id)
    return bool(match and match.group(2) is not None and match.group(3) == "")


def _shown(value: object) -> str:
    """A value from qstat as the status text shows it: plain words as they are, anything else quoted and
    escaped (a broken answer may put control characters where a letter was expected)."""
    text = str(value)
    return text if re.fullmatch(r"[\w.+-]*", text, re.ASCII) else json.dumps(text)


def task_state(block: JobBlock, job_id: str, task: str, array_done: bool) -> TaskState:
    """One job or subjob of qstat's answer as a TaskState, its raw text saying what PBS printed."""
    if block.how == UNREADABLE:
        return TaskState(job_id, task, UNKNOWN, f"qstat's JSON for {block.job_id} could not be read: {block.why}")
    attrs = block.attrs
    twice = [key for key in ("job_state", "Exit_status", "substate") if key in block.conflicts]
    if twice:
        said = ", ".join(f"{key} {' and '.join(map(_shown, block.conflicts[key]))}" for key in twice)
        return TaskState(job_id, task, UNKNOWN, f"qstat printed {block.job_id} twice, differently ({said})")
    letter = str(attrs.get("job_state", ""))
    exit_status = attrs.get("Exit_status")
    state = state_of(letter, exit_status, attrs.get("substate"), array_done or not task)
    raw = _shown(letter) if letter else "no job_state"
    if exit_status is not None:
        raw += f" ({exit_words(exit_status)}{_SUBSTATE_WORDS.get(_number(attrs.get('substate')), '')})"
        raw += "; PBS runs it again" if state == PENDING and letter in ENDED else ""
    elif letter in ENDED:
        raw += " (no Exit_status: deleted before it ran)"
    if block.how == SALVAGED:
        raw += f"; {block.why}"
    return TaskState(job_id, task, state, raw, "" if exit_status is None else str(exit_status))


def base_id(job_id: str) -> str:
    """'123[].server', '123[4].server', '123.server' -> '123'."""
    match = _ID.match(job_id.strip())
    return match.group(1) if match else job_id


class PBSScheduler(Scheduler):
    name = "pbs"
    label = "PBS Pro"
    prefix = "#PBS"
    submit_id = r"(?P<id>\d+(\[\d*\])?(\.\S+)?)"  # the whole id: "123[].server" names the array
    submit_program = "qsub"
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

    def query_argv(self, job_ids: list[str]) -> list[str]:
        # -x: finished jobs too; -t: array subjobs; JSON so no field is ever truncated.
        return ["qstat", "-x", "-f", "-F", "json", "-t", *job_ids]

    def parse_query(self, stdout: str) -> list[TaskState]:
        """Task states from qstat's JSON, read job by job where the whole does not read (_qstat_json):
        a job whose block cannot be read is UNKNOWN (never an end), and the others are read on."""
        blocks = read_jobs(stdout)
        # A finished array runs none of its subjobs again (qstat -t lists the array's own line too).
        done_arrays = {base_id(b.job_id) for b in blocks if _is_array(b.job_id) and b.attrs.get("job_state") == "F"}
        states = []
        for block in blocks:
            match = _ID.match(block.job_id)
            if match and not _is_array(block.job_id):  # an array's own line: its subjobs (-t) carry the states
                states.append(task_state(block, match.group(1), match.group(3) or "", match.group(1) in done_arrays))
        return states

    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        # Ids are kept as qsub printed them: '123[].server' deletes every subjob of the array.
        return ["qdel", *job_ids]

    def task_id(self, array_id: str, task: int) -> str | None:
        # '123[].server' -> the subjob '123[4].server'
        return array_id.replace("[]", f"[{task}]", 1) if "[]" in array_id else None

    def job_key(self, job_id: str) -> str:
        return base_id(job_id)
