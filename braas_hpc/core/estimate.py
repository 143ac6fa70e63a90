"""What a job will cost before it is submitted: wall time at its parallelism, and core-, GPU- or node-hours
in the site's billing units (the preset's `billing`).

The time per frame comes, in this order, from the scene's previous jobs on the same preset (their
summary.json: each frame's render time and each task's time in Blender), else from a calibration: the
scene rendered here twice at reduced resolution, at two sample counts, fitted as
`seconds = a + b * samples * pixels` (core.calibration). A task's time is its start-up (Blender, loading
the scene) plus its frames; the tasks run `max_parallel` at a time (all at once when there is no limit),
the time in the queue aside.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from dataclasses import asdict, dataclass

from . import registry
from .jobs import JobPaths, JobSpec
from .presets import Partition, Preset
from .schedulers.base import COMPLETED
from .transport import transport_for

log = logging.getLogger(__name__)
HISTORY_JOBS = 3  # the newest comparable jobs a rate is taken from


@dataclass(frozen=True)
class Rate:
    """Seconds one frame takes at the job's settings, and a task's start-up, with where they come from."""

    frame_seconds: float
    task_seconds: float  # a task's own time besides its frames (its first record to its last, frames aside)
    source: str  # "history" or "calibration"
    detail: str
    threads: int = 0  # cores the measured tasks used (0: not known)
    # Between one task ending and the next starting in its place: the scheduler's pace, and Blender starting
    # and loading the scene before the task's first record. In the wall time; the summary's hours leave it out.
    gap_seconds: float = 0.0


@dataclass(frozen=True)
class Estimate:
    source: str
    detail: str
    frames: int
    tasks: int
    parallel: int  # tasks running at once
    frame_seconds: float
    task_seconds: float
    gap_seconds: float
    wall_seconds: float  # first task starting to last task ending
    cores_per_task: int
    gpus_per_task: int
    core_hours: float
    gpu_hours: float
    node_hours: float
    billing: str  # the unit of `units` (presets.BILLING)
    billing_factor: float
    billing_confirmed: bool  # false: the preset does not say what the site bills, core-/GPU-hours are shown
    units: float

    def to_json(self) -> dict[str, object]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        unconfirmed = "" if self.billing_confirmed else " (the preset does not say how the site bills)"
        return (f"{_duration(self.wall_seconds)} from the first task's start for {self.frames} frame(s) as "
                f"{self.tasks} task(s), {self.parallel} at a time (the queue aside); {self.units:.4g} {self.billing}"
                f"{unconfirmed}; "
                f"{self.frame_seconds:.3g} s per frame from {self.source} ({self.detail})")


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def billing_of(preset: Preset, partition: Partition) -> tuple[str, float, bool]:
    """(unit, units per core-/GPU-/node-hour, whether the preset says so)."""
    unit = partition.billing or preset.billing
    if unit:
        return unit, partition.billing_factor, True
    return ("gpu-hours" if partition.kind == "gpu" else "core-hours"), 1.0, False


def makespan(durations: list[float], parallel: int, gap: float = 0.0) -> float:
    """When the last task ends, tasks taken in order by `parallel` slots (each slot takes the next task,
    `gap` seconds after its last one ended)."""
    slots = [-gap] * max(1, min(parallel, len(durations)))
    for seconds in durations:
        heapq.heappush(slots, heapq.heappop(slots) + gap + seconds)
    return max(slots) if durations else 0.0


def estimate(spec: JobSpec, preset: Preset, rate: Rate) -> Estimate:
    partition = preset.partition(spec.partition)
    durations = [rate.task_seconds + len(task) * rate.frame_seconds for task in spec.tasks]
    parallel = spec.max_parallel or len(spec.tasks)
    if spec.whole_node and partition.node_cores:
        cores = partition.node_cores
    else:
        cores = spec.cpus or rate.threads or partition.node_cores or 1
    gpus = spec.gpus
    if spec.whole_node:
        node_share = 1.0
    elif gpus and partition.node_gpus:
        node_share = gpus / partition.node_gpus
    elif partition.node_cores:
        node_share = min(1.0, cores / partition.node_cores)
    else:
        node_share = 1.0
    task_hours = sum(durations) / 3600
    amounts = {"core-hours": task_hours * cores, "gpu-hours": task_hours * gpus, "node-hours": task_hours * node_share}
    unit, factor, confirmed = billing_of(preset, partition)
    return Estimate(rate.source, rate.detail, len(spec.frames), len(spec.tasks), min(parallel, len(spec.tasks)),
                    rate.frame_seconds, rate.task_seconds, rate.gap_seconds,
                    makespan(durations, parallel, rate.gap_seconds), cores, gpus,
                    amounts["core-hours"], amounts["gpu-hours"], amounts["node-hours"], unit, factor, confirmed,
                    amounts[unit] * factor)


# --- the scene's previous jobs --------------------------------------------------------------------------------


def _scale(old: JobSpec, new: JobSpec, scene_percentage: int) -> float | None:
    """How much longer a frame of `new` renders than one of `old`: linear in pixels and samples. None when the
    two cannot be compared (a sample count given for one job only: the scene's own count is not known)."""
    if (old.samples == 0) != (new.samples == 0):
        return None
    samples = new.samples / old.samples if old.samples else 1.0
    pixels = ((new.resolution_percentage or scene_percentage) / (old.resolution_percentage or scene_percentage)) ** 2
    return samples * pixels


def comparable_jobs(spec: JobSpec) -> list[registry.JobRecord]:
    """The scene's completed jobs on the same preset and device, newest first."""
    same = [r for r in registry.list_jobs() if r.spec.scene == spec.scene and r.preset == spec.preset
            and r.spec.device == spec.device and r.state == COMPLETED and r.name != spec.name]
    same.sort(key=lambda r: r.created, reverse=True)
    return same[:HISTORY_JOBS]


_CAT_SCRIPT = 'for f in "$@"; do printf "%s\\0" "$f"; cat -- "$f" 2>/dev/null; printf "\\0"; done; exit 0'


async def read_summaries(preset: Preset, records: list[registry.JobRecord]) -> dict[str, dict]:
    """The summary.json of each job, in one remote call; a job without one is left out."""
    if not records:
        return {}
    paths = {f"{JobPaths(r.remote_root, r.name).job_dir}/summary.json": r.name for r in records}
    done = await transport_for(preset).run(["sh", "-c", _CAT_SCRIPT, "sh", *paths], timeout=60, check=False)
    parts = done.stdout.split("\0")
    found = {}
    for path, text in zip(parts[0::2], parts[1::2], strict=False):
        if path in paths and text.strip():
            try:
                found[paths[path]] = json.loads(text)
            except ValueError:
                log.info("summary of %s is not JSON: left out of the estimate", paths[path])
    return found


def rate_from_summary(summary: dict, parallel: int) -> tuple[float, float, int, float] | None:
    """(seconds per frame, a task's own seconds besides its frames, threads, gap between tasks in a slot)
    measured by a finished job whose tasks ran `parallel` at a time (0: all at once). The gap comes from its
    wall time against its tasks' time, when some tasks had to wait for others."""
    timings = [float(v) for v in (summary.get("timings") or {}).values()]
    tasks = int(summary.get("tasks") or 0)
    if not timings or not tasks:
        return None
    frame = sum(timings) / len(timings)
    busy = float(summary.get("task_seconds") or 0.0)  # the tasks' time in Blender (older summaries: unknown)
    own = max(0.0, (busy - sum(timings)) / tasks) if busy else 0.0
    waves = math.ceil(tasks / (parallel or tasks))
    wall = float(summary.get("wall_seconds") or 0.0)
    gap = max(0.0, (wall - waves * busy / tasks) / (waves - 1)) if busy and waves > 1 else 0.0
    return frame, own, int(summary.get("threads") or 0), gap


async def rate_from_history(spec: JobSpec, preset: Preset, scene_percentage: int) -> Rate | None:
    records = comparable_jobs(spec)
    summaries = await read_summaries(preset, records)
    rates = []
    for record in records:
        measured = rate_from_summary(summaries.get(record.name, {}), record.spec.max_parallel)
        scale = _scale(record.spec, spec, scene_percentage)
        if measured and scale is not None:
            rates.append((record.name, measured[0] * scale, measured[1], measured[2], scale, measured[3]))
    if not rates:
        return None

    def mean(i: int) -> float:
        return sum(r[i] for r in rates) / len(rates)  # type: ignore[misc]

    gaps = [r[5] for r in rates if r[5] > 0]  # only jobs whose tasks waited for others measured it
    scaled = [f"{r[0]} x{r[4]:.3g}" for r in rates if not math.isclose(r[4], 1.0)]
    detail = f"{len(rates)} previous job(s) of this scene: {', '.join(r[0] for r in rates)}"
    if scaled:
        detail += f"; scaled by samples x pixels: {', '.join(scaled)}"
    return Rate(mean(1), mean(2), "history", detail, max(r[3] for r in rates), sum(gaps) / len(gaps) if gaps else 0.0)

