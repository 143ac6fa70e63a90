"""How a new round of a job is planned from what its tasks measured: frames per task that fit the
walltime, nodes to avoid. Used by the client's recovery and by the cluster's own (the finish step runs
this module from the scripts it was installed with), so both plan the same round the same way.

Standard library only: it runs on the cluster too.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass

from .jobs import JobSpec
from .schedulers.base import NODE_NAME

WALLTIME_MARGIN = 0.75  # a new chunk's measured render time may fill this share of the walltime
FAILURES_TO_EXCLUDE = 2  # tasks of the job that died on a node before it is avoided
EARLY_DEATH = 0.9  # a task that stopped before this share of its walltime died of something else


@dataclass(frozen=True)
class Plan:
    frames: tuple[int, ...]
    chunk: int
    exclude_nodes: tuple[str, ...]
    seconds_per_frame: float | None  # measured (the slowest 10% of rendered frames), None: nothing measured


def seconds_per_frame(markers: list[dict[str, object]]) -> float | None:
    timings = sorted(float(s) for m in markers if isinstance(m.get("timings"), dict)
                     for s in m["timings"].values() if isinstance(s, int | float))  # type: ignore[union-attr]
    if not timings:
        return None
    return timings[min(len(timings) - 1, math.floor(len(timings) * 0.9))]


def failing_nodes(markers: list[dict[str, object]], walltime_min: int, now: float | None = None) -> tuple[str, ...]:
    """Nodes where tasks of the job died early (not at walltime) or failed to start, at least twice."""
    now = time.time() if now is None else now
    deaths: Counter[str] = Counter()
    for marker in markers:
        node, state, started = marker.get("node"), marker.get("state"), marker.get("started")
        if not isinstance(node, str) or not NODE_NAME.fullmatch(node):
            continue
        ended_early = (state == "running" and isinstance(started, int | float)
                       and now - started < walltime_min * 60 * EARLY_DEATH)
        if state == "failed" and marker.get("exit_code") == 4 or ended_early:
            deaths[node] += 1  # no GPU there, or killed under the task (node failure, out of memory)
    healthy = {m.get("node") for m in markers if m.get("state") == "done"}
    if not healthy - set(deaths):
        return ()  # no node is known to work: excluding the only ones seen could leave the job nowhere to run
    return tuple(sorted(node for node, count in deaths.items() if count >= FAILURES_TO_EXCLUDE))


def fitting_chunk(spec: JobSpec, per_frame: float | None, timed_out: bool) -> int:
    """Frames per task for the new round: what fits the walltime with a margin, never more than asked."""
    if per_frame is None or per_frame <= 0:
        return max(1, spec.chunk // 2) if timed_out else spec.chunk
    fits = spec.walltime_min * 60 * WALLTIME_MARGIN / per_frame
    if not math.isfinite(fits):  # a timing too small to divide by (or NaN): nothing measured
        return spec.chunk
    return max(1, min(spec.chunk, math.floor(fits)))


def plan(spec: JobSpec, markers: list[dict[str, object]], missing: tuple[int, ...], timed_out: bool,
         now: float | None = None) -> Plan:
    per_frame = seconds_per_frame(markers)
    return Plan(tuple(missing), fitting_chunk(spec, per_frame, timed_out),
                failing_nodes(markers, spec.walltime_min, now), per_frame)
