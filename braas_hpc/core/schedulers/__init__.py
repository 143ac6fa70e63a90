"""Schedulers: one face (render the batch script, submit, query many jobs at once, cancel).

Each scheduler is one module of this package, named as presets name it (`slurm.py` for
`scheduler = "slurm"`, see presets.scheduler_names), holding one Scheduler subclass with that `name`.
Nothing else lists them: presets, the CLI and the add-ons' preferences find them here, so a new
scheduler is one new file.
"""

from __future__ import annotations

import functools
import importlib

from ..errors import PresetError
from ..presets import scheduler_names
from .base import Scheduler, TaskState, render_job_script

__all__ = ["Scheduler", "TaskState", "all_schedulers", "render_job_script", "scheduler_for", "scheduler_names"]


@functools.cache
def _scheduler_class(kind: str) -> type[Scheduler]:
    module = importlib.import_module(f"{__name__}.{kind}")
    found = [c for c in vars(module).values()
             if isinstance(c, type) and issubclass(c, Scheduler) and getattr(c, "name", None) == kind]
    if len(found) != 1:
        raise PresetError(f"scheduler module {module.__name__} must hold one Scheduler named {kind!r}")
    return found[0]


def scheduler_for(kind: str) -> Scheduler:
    if kind not in scheduler_names():
        raise PresetError(f"scheduler {kind!r} is not supported (supported: {', '.join(scheduler_names())})")
    return _scheduler_class(kind)()


def all_schedulers() -> list[Scheduler]:
    """One of each, for lists the user chooses from (preferences, messages)."""
    return [scheduler_for(kind) for kind in scheduler_names()]
