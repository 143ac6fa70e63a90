"""Grid Engine (Son of Grid Engine, and the Univa/Altair descendants that kept its commands): qsub -t
arrays, one call for state (`qstat -xml` for what is queued or running, `qacct` for what has ended),
qdel.

Grid Engine sites put their commands on PATH through `$SGE_ROOT/$SGE_CELL/common/settings.sh`, which
a non-interactive SSH command does not read; every command here sources it first when SGE_ROOT is set.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
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
    task_environment_lines,
    walltime_hms,
)

# Reads the cell's settings (PATH to its commands), as a login shell there would; every script starts so.
_READ_CELL = ('[ -n "${SGE_ROOT:-}" ] && [ -r "$SGE_ROOT/${SGE_CELL:-default}/common/settings.sh" ] && '
              '. "$SGE_ROOT/${SGE_CELL:-default}/common/settings.sh"\n')
_WITH_CELL = _READ_CELL + 'exec "$@"'  # runs "$@"
# State of many jobs in one call: what is queued or running (qstat -xml), then the accounting of each
# id qstat no longer lists (a job leaves qstat when its last task ends). Sections start with "@@".
_QUERY = (_READ_CELL +
          'live=$(qstat -xml) || exit 1\n'
          'printf "@@qstat\\n%s\\n" "$live"\n'
          'for id in "$@"; do\n'
          '  case "$live" in *"<JB_job_number>$id</JB_job_number>"*) continue ;; esac\n'
          '  printf "@@qacct %s\\n" "$id"; qacct -j "$id" 2>&1\n'
          'done\n'
          'exit 0')
# qdel of a job that has ended says it "does not exist": that cancel has nothing left to do.
_CANCEL = (_READ_CELL +
           'out=$("$@" 2>&1); rc=$?; printf "%s\\n" "$out"; [ "$rc" = 0 ] && exit 0\n'
           'printf "%s\\n" "$out" | grep -v "does not exist" | grep -q . && exit "$rc"; exit 0')
PARALLEL_ENVIRONMENT = "smp"  # cores on one node; a site with another name drops "-pe" and adds its own


def state_of(letters: str) -> str:
    """qstat's state letters: qw hqw Rq pending, r t Rr dr running, anything with E stuck in error."""
    if "E" in letters:
        return FAILED  # Eqw: Grid Engine will not run it until someone clears the error
    if any(c in letters for c in "rtsST"):  # Rr restarted, dr being deleted: still on a node
        return RUNNING
    if any(c in letters for c in "qwh"):  # Rq re-queued, hqw held
        return PENDING
    if "d" in letters:
        return RUNNING  # deleted, not gone yet
    return UNKNOWN


def state_of_record(failed: str, exit_status: str) -> str:
    """An ended task by its accounting record: `failed` (Grid Engine's own reason code) and the exit status."""
    code = failed.split()[0] if failed.split() else ""
    if code == "0":
        return COMPLETED if exit_status == "0" else FAILED
    if code == "37":  # qmaster enforced h_rt, h_cpu or h_vmem
        return TIMEOUT
    if code == "100" and exit_status == "137":  # deleted (qdel) while running
        return CANCELLED
    return FAILED


def _task_field(text: str) -> str:
    """<tasks> of qstat -xml: "3" a running task; "1-4:1", "2-10:4" or "1,2,4" pending ones -> "[...]"."""
    text = text.strip()
    if not text or text.isdigit():
        return text
    indices: list[str] = []
    for part in text.split(","):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or (step and not step.isdigit()):
            return f"[{text}]"  # unreadable: covers nothing (monitor.covered_tasks)
        indices += [str(i) for i in range(int(first), int(last or first) + 1, int(step or 1) or 1)]
    return f"[{','.join(indices)}]"


def parse_qstat(xml: str) -> list[TaskState]:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise SchedulerError(f"qstat -xml printed no XML: {xml[:200]!r}") from exc
    states = []
    for job in root.iter("job_list"):
        number = (job.findtext("JB_job_number") or "").strip()
        letters = (job.findtext("state") or "").strip()
        if number:
            states.append(TaskState(number, _task_field(job.findtext("tasks") or ""), state_of(letters), letters))
    return states


def parse_qacct(job_id: str, text: str) -> list[TaskState]:
    """Each task's record (a block of "key value" lines after a line of '='); none for an unknown id."""
    states = []
    for block in re.split(r"^={20,}\s*$", text, flags=re.M):
        fields = dict(line.split(None, 1) if len(line.split(None, 1)) == 2 else (line.strip(), "")
                      for line in block.splitlines() if line.strip())
        if fields.get("jobnumber", "").strip() != job_id:
            continue
        task = fields.get("taskid", "").strip()
        failed = " ".join(fields.get("failed", "").split())  # "100 : assumedly after job"
        status = (fields.get("exit_status", "").split() or [""])[0]  # "137   (Killed)"
        states.append(TaskState(job_id, "" if task == "undefined" else task, state_of_record(failed, status),
                                f"failed {failed}, exit_status {status}", status))
    return states


class GridEngineScheduler(Scheduler):
    name = "sge"
    label = "Grid Engine"
    prefix = "#$"
    submit_id = r"(?P<id>\d+)(\.\d+-\d+:\d+)?"  # qsub -terse: "42", an array "42.1-3:1"
    submit_program = "qsub"
    index_variable = "SGE_TASK_ID"
    job_variable = "JOB_ID"
    thread_variables = ("NSLOTS",)
    commands = ("qsub", "qstat", "qacct")
    gpu_requests = ("gpus", "none")  # -l gpu=N (the consumable most sites name gpu), or none

    def task_environment(self) -> list[str]:
        # A job without an array has SGE_TASK_ID=undefined: its task number comes as given (-v).
        return ['[ "${SGE_TASK_ID:-}" = undefined ] && unset SGE_TASK_ID',
                *task_environment_lines(self.index_variable, self.job_variable, self.thread_variables)]

    def directive_pairs(self, spec: JobSpec, preset: Preset, paths: JobPaths, round_: Round) -> list[tuple[str, str]]:
        # -S: the queue's shell ignores the #! line.
        pairs = [("-N", job_name(spec.name, letter_first=True)), ("-S", "/bin/bash")]
        if queue := scheduler_partition(spec, preset):
            pairs.append(("-q", queue))
        if spec.account:
            pairs.append(("-A", spec.account))
        if self.uses_array(preset, round_):
            pairs.append(("-t", f"1-{round_.tasks}"))
            if 0 < spec.max_parallel < round_.tasks:
                pairs.append(("-tc", str(spec.max_parallel)))
        pairs.append(("-l", f"h_rt={walltime_hms(spec.walltime_min)}"))
        if preset.partition(spec.partition).preemptible:
            pairs.append(("-r", "y"))  # rerunnable: a task stopped by the site (or its host) goes back to the queue
        if spec.cpus and not spec.whole_node:
            pairs.append(("-pe", f"{PARALLEL_ENVIRONMENT} {spec.cpus}"))
        if spec.gpus and self.gpu_request(preset) == "gpus":
            pairs.append(("-l", f"gpu={spec.gpus}"))
        if spec.memory_gb:
            pairs.append(("-l", f"mem_free={spec.memory_gb}G"))
        # Grid Engine fills in $JOB_ID and $TASK_ID itself ("undefined" for a job without an array).
        pairs += [("-j", "y"), ("-o", f"{paths.log_dir}/sge-{round_.marker_prefix}$JOB_ID.$TASK_ID.out")]
        if spec.email:
            pairs += [("-M", spec.email), ("-m", "ea")]
        return pairs

    def format_directive(self, name: str, value: str) -> str:
        return f"{name} {value}" if value else name

    def after_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["-hold_jid", ",".join(job_ids)]

    def exclude_argv(self, nodes: Sequence[str]) -> list[str]:
        return ["-l", f"h=!({'|'.join(nodes)})"] if nodes else []

    def submit_argv(self, script: str, task: int | None = None, options: Sequence[str] = ()) -> list[str]:
        single = ["-v", f"BRAAS_TASK_ID={task}"] if task else []
        return ["sh", "-c", _WITH_CELL, "sh", "qsub", "-terse", *single, *options, script]

    def query_argv(self, job_ids: list[str]) -> list[str]:
        return ["sh", "-c", _QUERY, "sh", *job_ids]

    def parse_query(self, stdout: str) -> list[TaskState]:
        states: list[TaskState] = []
        for section in stdout.split("@@")[1:]:
            head, _, body = section.partition("\n")
            if head == "qstat":
                states += parse_qstat(body)
            elif head.startswith("qacct "):
                states += parse_qacct(head.split()[1], body)
        return states

    def live_query_argv(self, job_ids: list[str]) -> list[str]:
        # The accounting can lag (a site's flush_time): what qstat does not list any more has ended.
        return ["sh", "-c", _QUERY, "sh"]  # no ids: qstat only

    def parse_fallback(self, stdout: str) -> list[TaskState]:
        return self.parse_query(stdout)

    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["sh", "-c", _CANCEL, "sh", "qdel", *job_ids]

    def task_id(self, array_id: str, task: int) -> str:
        return f"{array_id}.{task}"  # qdel's job_id.task_range

    def task_log_patterns(self, task: int) -> list[str]:
        return [f"sge-*.{task}.out"]
