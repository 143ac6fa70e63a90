"""The scheduler face shared by Slurm and PBS Pro, and the job script body shared by all.

Script generation is a pure function of the job spec, the preset and the round, tested as text.
A subclass only knows its directives, its commands and its state names (dask-jobqueue's shape).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import PresetError, SchedulerError
from ..jobs import TREE_HASH_SH, JobPaths, JobSpec
from ..presets import Preset

# Normalised states. Terminal ones never change again, so they are never polled again.
PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, UNKNOWN = (
    "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "UNKNOWN",
)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMEOUT})


@dataclass(frozen=True)
class TaskState:
    job_id: str  # the scheduler's id of the whole array (as we stored it at submission)
    task: str  # array index, a range like "[3-4]" while pending, or "" for the whole job
    state: str  # one of the normalised states
    raw: str  # what the scheduler said, for the user
    exit_code: str = ""


# A node name that may go into --exclude (a directive line and a command): they come from the cluster
# (task markers) or the user, so anything else is refused rather than quoted.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Round:
    """One submission of a job: round 0 is the first; each resubmission of missing frames adds one."""

    number: int
    tasks: int  # array size
    exclude_nodes: tuple[str, ...] = ()  # nodes where tasks of this job died twice (where the site allows)

    @property
    def marker_prefix(self) -> str:
        return "" if self.number == 0 else f"r{self.number}-"

    def marker_name(self, task: int) -> str:
        """The file name of a task's marker in the job's status directory."""
        return f"{self.marker_prefix}task-{task}.json"


def task_environment_lines(index_variable: str = "", job_variable: str = "",
                           thread_variables: Sequence[str] = ()) -> list[str]:
    """Shell that exports what a task needs to know under braas-hpc's own names, from the scheduler's:
    BRAAS_TASK_ID (the array index; else BRAAS_TASK_ID as given, for local runs and one-task jobs, or the
    script's first argument), BRAAS_JOB_ID, and BRAAS_THREADS (the allocation's cores, 0: every core
    Blender sees) with BRAAS_THREADS_FROM, the variable they came from. The cluster scripts read only
    these. The names are the scheduler's constants, never user input."""
    index = f"${{{index_variable}:-${{BRAAS_TASK_ID:-${{1:-}}}}}}" if index_variable else "${BRAAS_TASK_ID:-${1:-}}"
    job = f"${{{job_variable}:-}}" if job_variable else "${BRAAS_JOB_ID:-}"
    threads = " ".join([*thread_variables, "OMP_NUM_THREADS"])  # OMP_NUM_THREADS: what a site's wrapper sets
    return [
        f'export BRAAS_TASK_ID="{index}" BRAAS_JOB_ID="{job}"',
        "BRAAS_THREADS=0 BRAAS_THREADS_FROM=",
        f'for v in {threads}; do eval "n=\\${{$v:-}}"; case "$n" in ""|*[!0-9]*|0) ;; '
        '*) BRAAS_THREADS=$n BRAAS_THREADS_FROM=$v; break ;; esac; done',
        "export BRAAS_THREADS BRAAS_THREADS_FROM",
    ]


@dataclass(frozen=True)
class Trust:
    """What a job checks before it runs anything: known at submission, so the cluster cannot change it."""

    script_sha256: str = ""  # the render (or finish) task's SHA-256; "": not known (a site's own scripts)
    blender_tree: str = ""  # the directory `braas-hpc install` unpacked Blender into ("": not ours)
    blender_tree_sha256: str = ""  # its tree hash (jobs.TREE_HASH_SH)


def trust_lines(paths: JobPaths, script: str, trust: Trust | None) -> list[str]:
    """Shell that refuses to go on unless the user's tree is still the user's (not swapped for another
    user's copy after submission), `script` is still the file submitted, and an installed Blender still
    has the files it was unpacked with. The job script itself is safe: the scheduler keeps its own copy."""
    q = shlex.quote
    trust = trust or Trust()
    root = q(paths.root)
    replaced = f"braas-hpc: {paths.root} is not your own directory any more (another user replaced it?): " \
               "refusing to run anything from it"
    lines = [f"if [ -L {root} ] || [ ! -O {root} ]; then echo {q(replaced)} >&2; exit 2; fi"]
    if trust.script_sha256:
        said = f"braas-hpc: {script} is not the script this job was submitted with (its SHA-256 differs): " \
               "refusing to run it; braas-hpc install puts it back"
        lines.append(f"printf '%s  %s\\n' {trust.script_sha256} {q(script)} | sha256sum -c --status - || "
                     f"{{ echo {q(said)} >&2; exit 2; }}")
    if trust.blender_tree and trust.blender_tree_sha256:
        said = f"braas-hpc: the Blender in {trust.blender_tree} is not the one braas-hpc install unpacked (its " \
               "files changed): refusing to run it; run braas-hpc install with the same archive again"
        lines += [TREE_HASH_SH, f'[ "$(braas_tree {q(trust.blender_tree)})" = {trust.blender_tree_sha256} ] || '
                  f"{{ echo {q(said)} >&2; exit 2; }}"]
    return lines


def render_job_script(header: list[str], spec: JobSpec, preset: Preset, paths: JobPaths, blender: list[str],
                      render_task: str, round_: Round | None = None, log_to_file: bool = True,
                      trust: Trust | None = None, environment: list[str] | None = None) -> str:
    """The array job script: maps its task index to frames through the round's frames file.

    The same body runs under every scheduler and on the `local` preset (header empty, and output
    left on stdout, where the local runner reads the progress lines, and no trust checks: the
    local tree is in the user's private data directory). `trust`: what the job checks before it starts;
    `environment`: the scheduler's task_environment (default: a local run's).
    """
    round_ = round_ or Round(0, len(spec.tasks))
    q = shlex.quote
    frames_file = paths.round_frames_file(round_.number).rsplit("/", 1)[-1]
    # Shell variables stay unquoted-by-us (double-quoted in place); every other word is quoted.
    threads, task = object(), object()
    render: list[object] = [
        # -Y: Python embedded in the .blend runs on the cluster only when the user opted in for this job.
        *blender, "-b", "-y" if spec.allow_scripts else "-Y", paths.scene,
        "-E", "CYCLES", "-t", threads, "-P", render_task, "--",
        "--job-dir", paths.job_dir, "--task", task, "--device", spec.device, "--format", spec.image_format,
        "--frames-file", frames_file,
    ]
    if spec.scene_name:
        render.append(f"--scene={spec.scene_name}")  # one word: a name may start with "-"
    if round_.marker_prefix:
        render += ["--marker-prefix", round_.marker_prefix]
    if spec.group:  # another cluster of the group may take a chunk this one has not started
        render.append("--claims")
    if spec.device == "GPU":
        render += ["--cycles-device", spec.cycles_device]
    # Only what the user overrode: everything else (colour, depth, codec, size, samples) stays the scene's.
    if spec.resolution_percentage:
        render += ["--resolution-percentage", spec.resolution_percentage]
    if spec.samples:
        render += ["--samples", spec.samples]
    if spec.split:  # a split still: the frames file lists parts; each part's samples and seed come from here
        render += ["--split-frame", spec.split_frame, "--part-samples", ",".join(map(str, spec.part_samples)),
                   "--part-offsets", ",".join(map(str, spec.part_offsets))]
    variables = {id(threads): '"$BRAAS_THREADS"', id(task): '"$BRAAS_TASK_ID"'}
    command = " ".join(variables.get(id(word), q(str(word))) for word in render)
    lines = ["#!/bin/bash", *header, ""]
    lines += [
        f"# braas-hpc job {spec.name}: {round_.tasks} task(s), frames per task in {frames_file}",
        "set -u",
        "umask 077  # frames, logs and markers are the user's alone",
        "export BRAAS_TASK_BEGAN=\"$(date +%s)\"  # before module loads and Blender's start: a task's whole cost",
        *preset.env,
        *(environment if environment is not None else task_environment_lines()),
        'if [ -z "$BRAAS_TASK_ID" ]; then echo "braas-hpc: no array task id in the environment" >&2; exit 2; fi',
        f"cd {q(paths.job_dir)} || exit 2",
        *([f'exec >>{q(paths.log_dir)}/"{round_.marker_prefix}task-$BRAAS_TASK_ID.log" 2>&1']
          if log_to_file else []),
        *(trust_lines(paths, render_task, trust) if log_to_file else []),
        f"exec {command}",
        "",
    ]
    return "\n".join(lines)


FINISH_WALLTIME_MIN = 15


def finish_job_script(header: list[str], spec: JobSpec, preset: Preset, paths: JobPaths, blender: list[str],
                      finish_task: str, round_: Round, trust: Trust | None = None) -> str:
    """The finish step's script: summary.json and thumb.jpg once every task of the round has ended."""
    q = shlex.quote
    command = [*blender, "-b", "--factory-startup", "-Y", "-t", "1", "-P", finish_task, "--",
               "--job-dir", paths.job_dir, "--format", spec.image_format, "--round", str(round_.number),
               *video_arguments(spec, preset)]
    return "\n".join([
        "#!/bin/bash", *header, "",
        f"# braas-hpc job {spec.name}: finish step of round {round_.number} (summary.json, thumb.jpg)",
        "set -u",
        "umask 077",
        *finish_environment(preset),
        *(preset.ffmpeg_env if spec.video and preset.ffmpeg else ()),
        f"cd {q(paths.job_dir)} || exit 2",
        f"exec >>{q(paths.log_dir)}/{round_.marker_prefix}finish.log 2>&1",
        *trust_lines(paths, finish_task, trust),
        f"exec {' '.join(q(word) for word in command)}",
        "",
    ])


def video_arguments(spec: JobSpec, preset: Preset) -> list[str]:
    """The finish step's movie (cluster_scripts/make_video.py): codec, rate, the scene's colour management."""
    if not (spec.video and preset.ffmpeg):
        return []
    return ["--video", spec.video, "--fps", f"{spec.fps or 24:g}", "--ffmpeg", preset.ffmpeg,
            "--view-transform", spec.view_transform, "--look", spec.look, "--exposure", f"{spec.exposure:g}",
            "--gamma", f"{spec.gamma:g}", "--display", spec.display_device]


# Seconds per frame the finish step adds for a movie, per codec, and for Blender's conversion of an EXR: about
# three times what 1920x1080 frames took on the test machine (bench/video_bench.py). At most the partition's limit.
VIDEO_SECONDS_PER_FRAME = {"h264": 2, "prores": 5, "av1": 15}
EXR_SECONDS_PER_FRAME = 3


def video_minutes(spec: JobSpec, preset: Preset) -> int:
    """The finish step's extra minutes for the job's movie (0: none to make)."""
    if not (spec.video and preset.ffmpeg):
        return 0
    per_frame = VIDEO_SECONDS_PER_FRAME[spec.video] + (EXR_SECONDS_PER_FRAME if spec.extension == "exr" else 0)
    return math.ceil(len(spec.frames) * per_frame / 60)


def finish_request(spec: JobSpec, preset: Preset) -> tuple[JobSpec, Preset]:
    """What the finish job asks for: the smallest request the job's own partition takes, there (a project
    that may render in a partition may run its summary there too), or in the partition that entry's
    `finish` names. No array, a few minutes; one core on a CPU partition; one GPU with the cores the site
    gives with one GPU on a GPU partition, where a request for no GPU may be refused and a GPU is what the
    project's allocation pays for. On a whole-node partition the site gives the node whatever is asked."""
    partition = preset.partition(spec.partition).finish or spec.partition
    part = preset.partition(partition)
    walltime = min(FINISH_WALLTIME_MIN + video_minutes(spec, preset), part.max_walltime_min if preset.partitions
                   else preset.max_walltime_min)
    gpus = 1 if part.kind == "gpu" else 0
    cpus = max(1, part.cpus_per_task // max(1, part.gpus_per_task)) if gpus else 1
    finish = dataclasses.replace(spec, name=f"{spec.name[:52]}-finish", partition=partition, qos=part.qos,
                                 gpus=gpus, cpus=cpus, whole_node=False, walltime_min=walltime, max_parallel=0,
                                 email="", memory_gb=0, device="CPU", cycles_device="CPU")
    return finish, dataclasses.replace(preset, arrays=False)


def finish_environment(preset: Preset) -> tuple[str, ...]:
    """The finish step's environment lines: the preset's `finish_env` when it has one (a summary needs no
    GPU modules), else its `env` (a site's Blender may itself come from a module)."""
    return preset.env if preset.finish_env is None else preset.finish_env


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
JOB_NAME_MAX = 64  # the schedulers allow more; shorter names stay readable in queue listings and e-mails


def job_name(name: str, letter_first: bool = False) -> str:
    """A job name the scheduler takes: printable, at most JOB_NAME_MAX long; with `letter_first`, starting
    with a letter (PBS Pro and Grid Engine refuse a leading digit)."""
    safe = _NAME_UNSAFE.sub("_", name)[:JOB_NAME_MAX]
    return safe if not letter_first or safe[:1].isalpha() else f"j{safe}"[:JOB_NAME_MAX]


def walltime_hms(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def scheduler_partition(spec: JobSpec, preset: Preset) -> str:
    """The partition/queue name the scheduler knows (a preset entry may be named after its QoS)."""
    return preset.partition(spec.partition).partition or spec.partition


def apply_drops(directives: list[tuple[str, str]], preset: Preset) -> list[tuple[str, str]]:
    """Remove directives the site rejects (by name, e.g. '--mem'); the preset's extras are added after."""
    dropped = set(preset.drop_directives)
    return [(name, value) for name, value in directives if name not in dropped]


class Scheduler(ABC):
    name: str  # what a preset's `scheduler` says
    label: str  # how the preferences and messages name it
    prefix: str  # "#SBATCH" or "#PBS"
    # The scheduler's names for what a task needs to know (see task_environment_lines).
    index_variable: str = ""
    job_variable: str = ""
    thread_variables: tuple[str, ...] = ()

    def task_environment(self) -> list[str]:
        """Shell lines of a job script that export BRAAS_TASK_ID, BRAAS_JOB_ID and BRAAS_THREADS."""
        return task_environment_lines(self.index_variable, self.job_variable, self.thread_variables)

    commands: tuple[str, ...] = ()  # what `braas-hpc test` looks for on the login node
    gpu_requests: tuple[str, ...] = ("none",)  # how a preset may ask for GPUs here; the first is the default

    def gpu_request(self, preset: Preset) -> str:
        """The preset's way of asking for GPUs (its `gpu_request`, else this scheduler's default), checked:
        a word another scheduler uses is refused before any script is written."""
        chosen = preset.gpu_request or self.gpu_requests[0]
        if chosen not in self.gpu_requests:
            raise PresetError(f"preset {preset.source}: gpu_request {chosen!r} is not one of "
                              f"{', '.join(self.gpu_requests)} under {self.label}")
        return chosen

    def says_unknown_id(self, stderr: str) -> bool:
        """Whether a failed queue query only said it knows none of the ids (they have all left the queue)."""
        return False

    def task_log_patterns(self, task: int) -> list[str]:
        """Globs of the scheduler's own output files for one array task (beside braas-hpc's task-N.log)."""
        return []

    def step_argv(self, job_id: str, argv: Sequence[str]) -> list[str] | None:
        """A command that runs `argv` inside the running job `job_id`, from the login node; None where
        the scheduler has none (the interactive session's job then starts commands it is asked for)."""
        return None

    @abstractmethod
    def directive_pairs(self, spec: JobSpec, preset: Preset, paths: JobPaths, round_: Round) -> list[tuple[str, str]]:
        """(name, value) pairs for this scheduler; the name is what a preset's drop_directives names."""

    @abstractmethod
    def format_directive(self, name: str, value: str) -> str: ...

    def directives(self, spec: JobSpec, preset: Preset, paths: JobPaths, round_: Round | None = None) -> list[str]:
        round_ = round_ or Round(0, len(spec.tasks))
        self.gpu_request(preset)  # a wrong word is refused for CPU jobs too: the preset is wrong
        pairs = apply_drops(self.directive_pairs(spec, preset, paths, round_), preset)
        extras = [*preset.extra_directives, *preset.partition(spec.partition).extra_directives]
        lines = [self.format_directive(n, v) for n, v in pairs]
        lines += [e for e in dict.fromkeys(extras) if e not in lines]  # a preset may repeat what we write
        return [f"{self.prefix} {line}" for line in lines]

    def render_script(self, spec: JobSpec, preset: Preset, paths: JobPaths, blender: list[str], render_task: str,
                      round_: Round | None = None, trust: Trust | None = None) -> str:
        round_ = round_ or Round(0, len(spec.tasks))
        header = self.directives(spec, preset, paths, round_)
        return render_job_script(header, spec, preset, paths, blender, render_task, round_, trust=trust,
                                 environment=self.task_environment())

    def finish_script(self, spec: JobSpec, preset: Preset, paths: JobPaths, blender: list[str], finish_task: str,
                      round_: Round, trust: Trust | None = None) -> str:
        finish, plain = finish_request(spec, preset)
        header = self.directives(finish, plain, paths, Round(round_.number, 1))
        return finish_job_script(header, spec, preset, paths, blender, finish_task, round_, trust)

    @abstractmethod
    def after_argv(self, job_ids: Sequence[str]) -> list[str]:
        """Submit options that start a job once every job given has ended, however it ended (afterany)."""

    def exclude_argv(self, nodes: Sequence[str]) -> list[str]:
        """Submit options that keep a job off `nodes`; none where the scheduler cannot say so."""
        return []

    def uses_array(self, preset: Preset, round_: Round) -> bool:
        return preset.arrays

    def submissions(self, preset: Preset, round_: Round) -> list[int | None]:
        """One array submission (None), or one job per task where the site has no arrays."""
        return [None] if self.uses_array(preset, round_) else list(range(1, round_.tasks + 1))

    @abstractmethod
    def submit_argv(self, script: str, task: int | None = None, options: Sequence[str] = ()) -> list[str]:
        """The submit command; `task` set means a plain job that runs that one task (no array);
        `options` (from after_argv, exclude_argv) go where this scheduler's submit command reads them."""

    # The submit command's answer: its last line, whole, matches this; group `id` is the job's id. The
    # cluster's submission helper reads ids with the same pattern (a finish step names its array's id).
    submit_id: str = r"(?P<id>\d+)"
    submit_program: str = "the submit command"

    def parse_submit(self, stdout: str) -> str:
        last = stdout.strip().splitlines()[-1:] or [""]
        match = re.fullmatch(self.submit_id, last[0].strip())
        if not match:
            raise SchedulerError(f"{self.submit_program} gave no job id; it said: {stdout.strip()[:200]!r}")
        return match.group("id")

    @abstractmethod
    def query_argv(self, job_ids: list[str]) -> list[str]:
        """One call that answers for every job id given (batched: never one call per job)."""

    @abstractmethod
    def parse_query(self, stdout: str) -> list[TaskState]: ...

    def fallback_query_argv(self, job_ids: list[str]) -> list[str] | None:
        """A second way to ask when the first fails (Slurm without accounting: squeue)."""
        return None

    def live_query_argv(self, job_ids: list[str]) -> list[str] | None:
        """The queue of tasks still pending or running, answered by `parse_fallback`: asked when the first
        answer does not cover every task of an array (Slurm's accounting lags its controller). None: the
        first answer is always whole (PBS's qstat -x comes from the server itself)."""
        return None

    def parse_fallback(self, stdout: str) -> list[TaskState]:
        return []

    @abstractmethod
    def cancel_argv(self, job_ids: list[str]) -> list[str]: ...

    def task_id(self, array_id: str, task: int) -> str | None:
        """The id of one task of an array job, as cancel_argv takes it (None: this scheduler cannot
        cancel one task alone)."""
        return None

    def job_key(self, job_id: str) -> str:
        """The part of a stored job id that TaskState.job_id carries (PBS drops '[]' and the server)."""
        return job_id
