"""Schedulers: one face (render the batch script, submit, query many jobs at once, cancel)."""

from __future__ import annotations

from ..errors import PresetError
from .base import Scheduler, TaskState, render_job_script
from .pbs import PBSScheduler
from .slurm import SlurmScheduler

__all__ = ["Scheduler", "TaskState", "render_job_script", "scheduler_for"]


def scheduler_for(kind: str) -> Scheduler:
    if kind == "slurm":
        return SlurmScheduler()
    if kind == "pbs":
        return PBSScheduler()
    raise PresetError(f"scheduler {kind!r} is not supported yet (supported: slurm, pbs)")
