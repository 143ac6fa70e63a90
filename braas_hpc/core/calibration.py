"""A calibration: the scene rendered on this computer at reduced resolution, at two sample counts, fitted
and scaled to the job's settings (core.estimate uses it when the scene has no previous job).

A Cycles frame takes about `a + b * samples * pixels`: `a` is the part that does not grow with the
samples (scene sync, BVH build, film and denoiser passes), `b` the path tracing. Two renders at the same
reduced resolution and different sample counts give both, so a scene whose set-up dominates a small
render is not multiplied up as if it were all path tracing (the plain ratio
`seconds * samples * pixels / (calibration samples * pixels)` over-estimates it; both are reported).
The fixed part is taken as it was measured, although part of it (film, denoising) grows with the pixels.
This computer is not the cluster: the rate is scaled by the cores (this computer's against the task's),
which is only as good as the two kinds of core are alike.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BraasError
from .estimate import Rate
from .jobs import JobSpec
from .local_blender import local_blender, run_blender

SCRIPT = Path(__file__).resolve().parents[1] / "blender_scripts" / "calibrate.py"
TIMEOUT_S = 600
PERCENTAGE = 25  # of the job's resolution
LOW_SAMPLES, HIGH_SAMPLES = 4, 16  # at most; fewer when the job renders fewer


@dataclass(frozen=True)
class Calibration:
    """What the renders measured, and the fit."""

    percentage: int  # of the scene's own resolution, as rendered
    samples: tuple[int, int]
    seconds: tuple[float, float]
    scene_resolution: tuple[int, int]
    scene_percentage: int
    scene_samples: int
    threads: int  # cores the calibration renders used
    startup_seconds: float  # Blender starting and loading the scene, here

    def pixels(self, percentage: int) -> float:
        return self.scene_resolution[0] * self.scene_resolution[1] * (percentage / 100) ** 2

    def fit(self) -> tuple[float, float]:
        """(a, b) of seconds = a + b * samples * pixels, from the two renders (a and b never below 0)."""
        (s1, s2), (t1, t2) = self.samples, self.seconds
        pixels = self.pixels(self.percentage)
        b = max(0.0, (t2 - t1) / ((s2 - s1) * pixels)) if s2 > s1 else t2 / (s2 * pixels)
        return max(0.0, t1 - b * s1 * pixels), b

    def frame_seconds(self, samples: int, percentage: int) -> float:
        a, b = self.fit()
        return a + b * samples * self.pixels(percentage)

    def ratio_seconds(self, samples: int, percentage: int) -> float:
        """The plain ratio from the larger render, for comparison."""
        return self.seconds[1] * samples * self.pixels(percentage) / (self.samples[1] * self.pixels(self.percentage))


def _settings(spec: JobSpec, scene_percentage: int, scene_samples: int) -> tuple[int, int]:
    return spec.samples or scene_samples, spec.resolution_percentage or scene_percentage


async def calibrate(spec: JobSpec, scene_percentage: int) -> Calibration:
    """Render the job's scene here twice at reduced settings (a few seconds for most scenes)."""
    blender = local_blender()
    percentage = max(1, round((spec.resolution_percentage or scene_percentage) * PERCENTAGE / 100))
    samples = [LOW_SAMPLES, HIGH_SAMPLES]
    if spec.samples:
        samples = [max(1, min(LOW_SAMPLES, spec.samples // 4)), max(2, min(HIGH_SAMPLES, spec.samples))]
    with tempfile.TemporaryDirectory(prefix="braas-hpc-calibrate-") as temp:
        report = Path(temp) / "calibration.json"
        argv = [*blender, "-b", "-Y", spec.scene, "-P", str(SCRIPT), "--", "--report", str(report), "--out", temp,
                "--percentage", str(percentage), "--samples", ",".join(map(str, samples)),
                "--frame", str(spec.frames[0]), *(["--scene", spec.scene_name] if spec.scene_name else [])]
        started = time.monotonic()
        code, stdout, stderr = await run_blender(argv, TIMEOUT_S, f"the calibration render of {spec.scene}")
        elapsed = time.monotonic() - started
        if code != 0 or not report.is_file():
            tail = "\n".join((stderr or stdout).decode(errors="replace").strip().splitlines()[-10:])
            raise BraasError(f"the calibration render of {spec.scene} failed (exit status {code}):\n{tail}")
        data = json.loads(report.read_text())
    scene = data["scene"]
    if scene["engine"] != "CYCLES":
        raise BraasError(f"{spec.scene} renders with {scene['engine']}: only Cycles scenes can be calibrated")
    seconds = tuple(float(t["seconds"]) for t in data["timings"])
    return Calibration(percentage, (samples[0], samples[1]), (seconds[0], seconds[1]),
                       tuple(scene["resolution"]), int(scene["percentage"]), int(scene["samples"]),
                       int(data.get("threads") or os.cpu_count() or 1), max(0.0, elapsed - sum(seconds)))


def rate_from_calibration(calibration: Calibration, spec: JobSpec, task_cores: int) -> Rate:
    """The job's time per frame from a calibration, scaled from this computer's cores to the task's."""
    samples, percentage = _settings(spec, calibration.scene_percentage, calibration.scene_samples)
    cores = task_cores / calibration.threads if task_cores else 1.0
    frame = calibration.frame_seconds(samples, percentage) / cores
    ratio = calibration.ratio_seconds(samples, percentage) / cores
    a, b = calibration.fit()
    detail = (f"calibration on this computer: {calibration.samples[0]} and {calibration.samples[1]} samples at "
              f"{calibration.percentage}% took {calibration.seconds[0]:.2f} s and {calibration.seconds[1]:.2f} s; "
              f"fitted {a:.2f} s + {b:.3g} s per sample-pixel, for {samples} samples at {percentage}%; the plain "
              f"ratio would say {ratio:.3g} s; cores {calibration.threads} here, {task_cores or 'as here'} per task")
    # Blender starting and loading the scene comes before a task's first record: a gap, not the task's own time.
    return Rate(frame, 0.0, "calibration", detail, task_cores or calibration.threads,
                gap_seconds=calibration.startup_seconds)
