"""This computer as a scheduler: the `local` preset's jobs go through a small queue of our own
(braas_hpc/local_queue.py), so they are submitted, watched, cancelled, resubmitted and finished like a
cluster's, and keep rendering when Blender or the terminal is closed.

The queue runs one task at a time: each task's Blender uses every core (and GPU) of this computer, and
two at once would only fight over them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..jobs import JobPaths, JobSpec
from ..paths import data_dir
from ..presets import LOCAL, Preset
from .base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, UNKNOWN, Round, Scheduler, TaskState

QUEUE_SCRIPT = Path(__file__).resolve().parents[2] / "local_queue.py"
_STATES = frozenset({PENDING, RUNNING, COMPLETED, FAILED, CANCELLED})  # what the queue says; else UNKNOWN


def queue_dir() -> Path:
    """The user's queue: one per user and computer, whatever the preset's workdir."""
    return data_dir() / "local-queue"


class LocalScheduler(Scheduler):
    name = LOCAL
    label = "This computer"
    prefix = "#BRAAS-LOCAL"
    submit_program = "the local queue"

    def _queue(self, verb: str) -> list[str]:
        # The Python running braas-hpc: in Blender, its bundled Python (the queue needs only the stdlib).
        return [sys.executable, str(QUEUE_SCRIPT), str(queue_dir()), verb]

    def directive_pairs(self, spec: JobSpec, preset: Preset, paths: JobPaths, round_: Round) -> list[tuple[str, str]]:
        return [("--array", f"1-{round_.tasks}")] if self.uses_array(preset, round_) else []

    def format_directive(self, name: str, value: str) -> str:
        return f"{name}={value}"

    def after_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["--after", ",".join(job_ids)]

    def submit_argv(self, script: str, task: int | None = None, options: Sequence[str] = ()) -> list[str]:
        return [*self._queue("submit"), *options, *(["--task", str(task)] if task is not None else []), script]

    def query_argv(self, job_ids: list[str]) -> list[str]:
        return [*self._queue("query"), *job_ids]

    def parse_query(self, stdout: str) -> list[TaskState]:
        states = []
        for line in stdout.splitlines():
            try:
                item = json.loads(line)
                state = item["state"] if item["state"] in _STATES else UNKNOWN
                states.append(TaskState(str(item["job"]), str(item["task"]), state,
                                        str(item.get("raw", "")), str(item.get("exit", ""))))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged line says nothing; the frames and the next poll decide
        return states

    def cancel_argv(self, job_ids: list[str]) -> list[str]:
        return [*self._queue("cancel"), *job_ids]

    def task_id(self, array_id: str, task: int) -> str:
        return f"{array_id}.{task}"
