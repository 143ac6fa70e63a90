"""Schedulers: one face (render the batch script, submit, query many jobs at once, cancel)."""

from __future__ import annotations

from ..errors import PresetError
from .base import Scheduler, TaskState, render_job_script
from .slurm import SlurmScheduler

__all__ = ["Scheduler", "TaskState", "render_job_script", "scheduler_for"]


def scheduler_for(kind: str) -> Scheduler:
    if kind == "slurm":
        return SlurmScheduler()
    raise PresetError(f"scheduler {kind!r} is not supported yet (supported: slurm, local)")
