"""The scheduler face shared by Slurm, PBS Pro and the local runner.

Script generation is a pure function of the job spec and the preset, tested as text.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..jobs import JobPaths, JobSpec
from ..presets import Preset

# Normalised states. Terminal ones never change again, so they are never polled again.
PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, UNKNOWN = (
    "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "UNKNOWN",
)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMEOUT})


@dataclass(frozen=True)
class TaskState:
    job_id: str  # the scheduler's id of the whole array
    task: str  # array index, a range like "[3-4]" while pending, or "" for the whole job
    state: str  # one of the normalised states
    raw: str  # what the scheduler said, for the user
    exit_code: str = ""


def task_id_shell() -> str:
    """Shell that finds the array index under any scheduler; local runs set BRAAS_TASK_ID."""
    return 'task_id="${SLURM_ARRAY_TASK_ID:-${PBS_ARRAY_INDEX:-${BRAAS_TASK_ID:-}}}"'


def render_job_script(
    header: list[str], spec: JobSpec, preset: Preset, paths: JobPaths, blender: list[str], render_task: str
) -> str:
    """The array job script: maps its task index to frames through frames.txt via render_task.py.

    The same body runs under every scheduler and on the `local` preset (header empty).
    """
    q = shlex.quote
    lines = ["#!/bin/bash", *header, ""]
    lines += [
        f"# braas-hpc job {spec.name}: {len(spec.tasks)} task(s), frames listed per task in frames.txt",
        "set -u",
        *preset.env,
        task_id_shell(),
        'if [ -z "$task_id" ]; then echo "braas-hpc: no array task id in the environment" >&2; exit 2; fi',
        'threads="${SLURM_CPUS_PER_TASK:-${NCPUS:-0}}"',
        f"cd {q(paths.job_dir)} || exit 2",
        # -Y: Python embedded in the .blend never runs on the cluster unless a later issue opts in.
        f"exec {shlex.join(blender)} -b -Y {q(paths.scene)} -E CYCLES -t \"$threads\" "
        f"-P {q(render_task)} -- --job-dir {q(paths.job_dir)} --task \"$task_id\" "
        f"--device {q(spec.device)} --format {q(spec.image_format)}",
        "",
    ]
    return "\n".join(lines)


class Scheduler(ABC):
    name: str

    @abstractmethod
    def directives(self, spec: JobSpec, preset: Preset, paths: JobPaths) -> list[str]:
        """Header lines (`#SBATCH ...`) for this scheduler."""

    def render_script(
        self, spec: JobSpec, preset: Preset, paths: JobPaths, blender: list[str], render_task: str
    ) -> str:
        return render_job_script(self.directives(spec, preset, paths), spec, preset, paths, blender, render_task)

    @abstractmethod
    def submit_argv(self, script: str) -> list[str]: ...

    @abstractmethod
    def parse_submit(self, stdout: str) -> str: ...

    @abstractmethod
    def query_argv(self, job_ids: list[str]) -> list[str]: ...

    @abstractmethod
    def parse_query(self, stdout: str) -> list[TaskState]: ...

    @abstractmethod
    def cancel_argv(self, job_ids: list[str]) -> list[str]: ...


def walltime_hms(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"
