"""Before Submit: what the job will cost (core.estimate) against what the project has left (core.allocation).

The CLI's `submit --estimate`, `submit` itself and the panel call `costs`. A calibration is a render on
this computer, so only an explicit estimate makes one; its rate is remembered for the scene file and the
settings that change a frame's time (samples, resolution, device, partition, cores) for a day, so the
Submit that follows uses it without rendering again (the panel saves the file at Submit: its time is no key).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from . import registry
from .allocation import Allocation, allocation
from .calibration import calibrate as run_calibration
from .calibration import rate_from_calibration
from .errors import BraasError
from .estimate import Estimate, Rate, estimate, rate_from_history, read_summaries
from .jobs import JobSpec
from .paths import data_dir, private_dir
from .presets import Preset, load_preset
from .scene_settings import read_scene_settings
from .spec import ACCOUNT_PLACEHOLDER, SubmitRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Costs:
    estimate: Estimate | None
    allocation: Allocation | None
    warnings: tuple[str, ...] = ()  # the estimate above the balance: Submit goes on all the same
    notes: tuple[str, ...] = ()  # why there is no estimate, or no balance

    def to_json(self) -> dict[str, object]:
        return {"estimate": self.estimate.to_json() if self.estimate else None,
                "allocation": self.allocation.to_json() if self.allocation else None,
                "warnings": list(self.warnings), "notes": list(self.notes)}

    def lines(self) -> list[str]:
        lines = [f"estimate: {self.estimate.line()}"] if self.estimate else []
        if self.allocation and self.allocation.chosen:
            b = self.allocation.chosen
            lines.append(f"allocation: {b.remaining:.6g} {b.unit} left for {b.project}"
                         f"{' on ' + b.resource if b.resource else ''}")
        return lines + [f"note: {n}" for n in self.notes]


REMEMBERED_S = 24 * 3600


def _cache_file(spec: JobSpec) -> Path:
    key = json.dumps([spec.scene, spec.preset, spec.device, spec.partition, spec.samples,
                      spec.resolution_percentage, spec.scene_name, spec.cpus, spec.gpus])
    return data_dir() / "estimates" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def remembered_rate(spec: JobSpec, now: float | None = None) -> Rate | None:
    try:
        data = json.loads(_cache_file(spec).read_text())
        if (now or time.time()) - float(data.pop("made")) > REMEMBERED_S:
            return None
        return Rate(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def remember_rate(spec: JobSpec, rate: Rate) -> None:
    path = _cache_file(spec)
    private_dir(path.parent)
    temp = path.with_suffix(".part")
    temp.write_text(json.dumps({**asdict(rate), "made": time.time()}))
    os.replace(temp, path)


async def job_rate(spec: JobSpec, preset: Preset, scene_percentage: int, calibrate: bool,
                   history: bool = True) -> tuple[Rate | None, str]:
    """The job's rate. An explicit estimate (`calibrate`): the scene's previous jobs, else a calibration
    remembered or made now; the rate is remembered for the Submit that follows. A Submit: the rate
    remembered, else (with `history`) the previous jobs; it never renders here."""
    rate = None if calibrate else remembered_rate(spec)
    if rate is None and (history or calibrate):
        rate = await rate_from_history(spec, preset, scene_percentage)
    if rate is None and calibrate:
        rate = remembered_rate(spec)
        if rate is None or rate.source != "calibration":
            measured = await run_calibration(spec, scene_percentage)
            task_cores = spec.cpus or preset.partition(spec.partition).node_cores
            rate = rate_from_calibration(measured, spec, task_cores)
    if rate is None:
        return None, ("no estimate: the scene has no finished job on this preset yet; `braas-hpc submit --estimate` "
                      "(or the panel's Estimate) calibrates it here first")
    if calibrate:
        remember_rate(spec, rate)
    return rate, ""


def over_balance(found: Estimate, balance: Allocation) -> str:
    chosen = balance.chosen
    if chosen is None:
        return ""
    if chosen.unit != found.billing:
        return ""  # not the same unit: nothing to compare (the note says so)
    if found.units > chosen.remaining:
        return (f"the estimate ({found.units:.4g} {found.billing}) is more than what {chosen.project} has left "
                f"({chosen.remaining:.4g} {chosen.unit}{' on ' + chosen.resource if chosen.resource else ''}); "
                "the job may stop when the allocation runs out")
    return ""


async def costs(spec: JobSpec, preset: Preset, scene_percentage: int, calibrate: bool = False) -> Costs:
    """The job's estimate and the project's balance, each where it can be had; a warning when the first is
    larger. Nothing here stops a submission: a failure to read either is a note. A Submit (`calibrate`
    false) asks the cluster only when the preset has an allocation command."""
    notes: list[str] = []
    found = None
    try:
        rate, why = await job_rate(spec, preset, scene_percentage, calibrate, bool(preset.allocation_command))
        found = estimate(spec, preset, rate) if rate else None
        if why:
            notes.append(why)
    except BraasError as exc:
        if calibrate:
            raise
        notes.append(f"no estimate: {exc}")
    balance = None
    if preset.allocation_command and spec.account == ACCOUNT_PLACEHOLDER:
        notes.append("no allocation shown: give the project (--account, or the preset's account)")
    elif preset.allocation_command and spec.account:
        kind = preset.partition(spec.partition).kind
        try:
            balance = await allocation(preset, spec.account, kind)
        except BraasError as exc:
            notes.append(f"the allocation could not be read: {exc}")
        else:
            if balance.chosen is None:
                notes.append(f"{' '.join(balance.command)} lists no allocation of {spec.account}")
            elif found and balance.chosen.unit != found.billing:
                notes.append(f"the balance is in {balance.chosen.unit}, the estimate in {found.billing}: not compared")
    warning = over_balance(found, balance) if found and balance else ""
    return Costs(found, balance, (warning,) if warning else (), tuple(notes))


async def for_request(request: SubmitRequest, built: tuple[JobSpec, Preset], calibrate: bool = False) -> Costs:
    spec, preset = built
    settings = request.scene_settings or await asyncio.to_thread(read_scene_settings, Path(spec.scene))
    return await costs(spec, preset, settings.resolution_percentage, calibrate)


def actual_of(summary: dict) -> dict[str, object]:
    """What a finished job really took, from its summary.json, under the estimate's names."""
    return {"wall_seconds": summary.get("wall_seconds"), "core_hours": summary.get("core_hours"),
            "gpu_hours": summary.get("gpu_hours"), "task_seconds": summary.get("task_seconds"),
            "frame_seconds": (summary.get("seconds_per_frame") or {}).get("mean")}


async def settle(jobs: list[tuple[str, str, bool]]) -> dict[str, dict]:
    """The estimates of these jobs (name, preset, summary written), each with `actual` once its summary is
    there: read once per job (one remote call per cluster), then kept in the registry."""
    found: dict[str, dict] = {}
    pending: dict[str, list[registry.JobRecord]] = defaultdict(list)
    for name, preset, summary in jobs:
        expected = registry.get_estimate(name)
        if expected:
            found[name] = expected
            if summary and "actual" not in expected:
                pending[preset].append(registry.get_job(name))
    for preset_name, records in pending.items():
        try:
            summaries = await read_summaries(load_preset(preset_name), records)
        except BraasError as exc:
            log.info("the summaries of %s could not be read for their estimates: %s", preset_name, exc)
            continue
        for name, summary in summaries.items():
            found[name] = {**found[name], "actual": actual_of(summary)}
            registry.set_estimate(name, found[name])
    return found


def compared(expected: dict) -> str:
    """One line: the estimate, and the actual beside it when the job has ended."""
    unit = expected.get("billing", "core-hours")
    text = (f"estimated {expected.get('units', 0):.4g} {unit}, {expected.get('core_hours', 0):.4g} core-hours, "
            f"{expected.get('wall_seconds', 0):.0f} s wall")
    actual = expected.get("actual")
    if actual:
        text += (f"; actual {actual.get('core_hours') or 0:.4g} core-hours, {actual.get('gpu_hours') or 0:.4g} "
                 f"GPU-hours, {actual.get('wall_seconds') or 0:.0f} s wall")
    return text
