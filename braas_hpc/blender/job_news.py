"""A job that ends, told three ways when the jobs list sees it end: Blender's own report (the status bar and
the Info editor), the panel's message line (the jobs list's notes), and the desktop's notification where
the system has one and the preferences ask for it (core.notify, on the loop: never the main thread's time)."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from ..core.errors import BraasError
from ..core.schedulers.base import COMPLETED
from . import activity, addon
from .addon import runtime

NOTIFY = "notify"  # its operations' kind: short, not shown as work on the status line


class BRAAS_HPC_OT_job_ended(bpy.types.Operator):
    """Report that a job ended (the jobs list calls it when it sees one end)"""

    bl_idname = "braas_hpc.job_ended"
    bl_label = "Job Ended"
    bl_options = {"INTERNAL"}
    message: StringProperty(options={"SKIP_SAVE"})
    level: EnumProperty(items=[("INFO", "Info", ""), ("WARNING", "Warning", "")], options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({self.level}, self.message)
        return {"FINISHED"}


def ended_text(name: str, state: str, done: int, total: int) -> str:
    word = {"COMPLETED": "is done", "FAILED": "failed", "CANCELLED": "was cancelled",
            "TIMEOUT": "ran out of time"}.get(state, state.lower())
    return f"Job {name} {word}: {done} of {total} frames"


def _desktop_wanted() -> bool:
    try:
        return bool(addon.preferences().notify_desktop) and not runtime.background()
    except BraasError:
        return False


def announce(ended: list[tuple[str, str, int, int]]) -> list[str]:
    """Report each (job, state, frames done, frames total) that has just ended; returns the lines for the
    panel's message line (the jobs list tells them with its other notes)."""
    texts = []
    for name, state, done, total in ended:
        text = ended_text(name, state, done, total)
        texts.append(text)
        level = "INFO" if state == COMPLETED and done == total else "WARNING"
        try:
            bpy.ops.braas_hpc.job_ended(message=text, level=level)
        except RuntimeError as error:  # no context to report in (a window closing): the message line has it
            print(f"braas-hpc: {text} ({error})")
        if _desktop_wanted():
            runtime.state.bridge.run(f"Notifying: {name}", lambda text=text: activity.notify_desktop(text), NOTIFY)
    return texts


CLASSES = (BRAAS_HPC_OT_job_ended,)
