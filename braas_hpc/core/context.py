"""A job resolved once for a verb: what the CLI and the add-ons hand to cancel, resubmit, logs and
download, so a verb never looks its job, preset, scheduler or transport up again by name."""

from __future__ import annotations

from dataclasses import dataclass

from . import registry
from .jobs import JobPaths
from .presets import Preset, load_preset
from .registry import JobRecord
from .schedulers import Scheduler, scheduler_for
from .transport import Transport, transport_for


@dataclass(frozen=True)
class JobContext:
    record: JobRecord
    preset: Preset
    scheduler: Scheduler
    transport: Transport

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def paths(self) -> JobPaths:
        return JobPaths(self.record.remote_root, self.record.name)


def context_of(record: JobRecord, preset: Preset | None = None, backend: str | None = None) -> JobContext:
    """The context of a job whose record is already read (and its preset, when already loaded)."""
    preset = preset or load_preset(record.preset)
    return JobContext(record, preset, scheduler_for(preset.scheduler), transport_for(preset, backend))


def job_context(name: str, backend: str | None = None) -> JobContext:
    """Resolve a job by its name: the registry once, its preset once. Call it inside the event loop
    (transports belong to one)."""
    return context_of(registry.get_job(name), backend=backend)
