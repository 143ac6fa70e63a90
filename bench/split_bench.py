"""Split stills: the cost of each part against the cost of the whole still, and the merged image's error.

The real render task (cluster_scripts/render_task.py) in Blender (the bpy module, through the launcher a
cluster's `blender` stand-in uses), one process at a time, as a cluster's array task runs it: the still as
an ordinary task, then as N parts (--split-samples N) for each N given, interleaved, each N followed by the
finish step that merges it. Per task: wall time and CPU time of the whole process (Blender's start and
the scene's loading included) and the render time the task's marker records. CPU time is what the machine
did for the task, so other load on the machine moves it little; wall time is what a user waits.
Then the RMSE against a high-sample reference of the single render, one part and the merge
(tests/split_images.py).

    python3 bench/split_bench.py [--size 320 180] [--samples 256] [--parts 2,4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tests" / "split_images.py"
BLENDER = [sys.executable, str(REPO / "braas_hpc" / "bpy_blender.py")]
SCRIPTS = REPO / "cluster_scripts"


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=3600, env={**os.environ, "BRAAS_THREADS": "0"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic() - started, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def job(work: Path, scene: Path, name: str, parts: int, samples: int) -> Path:
    """A job directory as a submission leaves it: the scene in in/, one line per task, job.json's spec."""
    job_dir = work / name
    shutil.rmtree(job_dir, ignore_errors=True)
    (job_dir / "in").mkdir(parents=True)
    shutil.copy(scene, job_dir / "in" / "scene.blend")
    base, extra = divmod(samples, parts)
    spec = {"frames": list(range(1, parts + 1)), "split_frame": 1, "scene_name": "Scene", "image_format": "OPEN_EXR",
            "part_samples": [base + 1 if k < extra else base for k in range(parts)] if parts > 1 else [],
            "part_offsets": [sum(divmod(samples, parts)[0] + (1 if j < extra else 0) for j in range(k))
                             for k in range(parts)] if parts > 1 else []}
    (job_dir / "frames.txt").write_text("".join(f"{k}\n" for k in range(1, parts + 1)))
    (job_dir / "job.json").write_text(json.dumps({"spec": spec}))
    return job_dir


def render_task(job_dir: Path, task: int) -> list[str]:
    spec = json.loads((job_dir / "job.json").read_text())["spec"]
    split = (["--split-frame", "1", "--part-samples", ",".join(map(str, spec["part_samples"])),
              "--part-offsets", ",".join(map(str, spec["part_offsets"]))] if spec["part_samples"] else [])
    return [*BLENDER, "-b", "-Y", str(job_dir / "in" / "scene.blend"), "-E", "CYCLES", "-P",
            str(SCRIPTS / "render_task.py"), "--", "--job-dir", str(job_dir), "--task", str(task), "--format",
            "OPEN_EXR", "--scene=Scene", *split]


def finish_task(job_dir: Path) -> list[str]:
    return [*BLENDER, "-b", "--factory-startup", "-Y", "-t", "1", "-P", str(SCRIPTS / "finish_task.py"), "--",
            "--job-dir", str(job_dir), "--format", "OPEN_EXR"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, nargs=2, default=(320, 180))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--parts", default="2,4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference-samples", type=int, default=4096)
    args = parser.parse_args()
    counts = [1, *(int(n) for n in args.parts.split(","))]
    wall: dict[int, list[float]] = {n: [] for n in counts}
    cpu: dict[int, list[float]] = {n: [] for n in counts}
    rendered: dict[int, list[float]] = {n: [] for n in counts}
    finish: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="split-bench-") as tmp:
        work = Path(tmp)
        scene = work / "still.blend"
        subprocess.run([sys.executable, str(TOOL), "scene", str(scene), "--size", *map(str, args.size),
                        "--samples", str(args.samples)], check=True, capture_output=True, timeout=600)
        images: dict[str, str] = {}
        for attempt in range(args.repeat):  # interleaved: a busy moment of the machine spreads over every N
            for parts in counts:
                job_dir = job(work, scene, f"n{parts}-{attempt}", parts, args.samples)
                for task in range(1, parts + 1):
                    seconds, cpu_seconds = timed(render_task(job_dir, task))
                    wall[parts].append(seconds)
                    cpu[parts].append(cpu_seconds)
                    marker = json.loads((job_dir / "status" / f"task-{task}.json").read_text())
                    rendered[parts].append(sum(marker["timings"].values()))
                if parts > 1:
                    finish[parts].append(timed(finish_task(job_dir))[0])
                    if attempt == 0:
                        images[f"merged {parts}"] = str(job_dir / "out" / "frame_000001.exr")
                        images[f"one part of {parts}"] = str(job_dir / "out" / "frame_000001.part001.exr")
        done = subprocess.run([sys.executable, str(TOOL), "measure", str(scene), str(work / "measure"),
                               *images.values(), "--reference-samples", str(args.reference_samples)],
                              capture_output=True, text=True, timeout=3600, check=True)
        found = json.loads(done.stdout.strip().splitlines()[-1])
    med = {n: (statistics.median(wall[n]), statistics.median(cpu[n]), statistics.median(rendered[n])) for n in counts}
    print(f"{args.size[0]}x{args.size[1]} px, {args.samples} samples, CPU ({os.cpu_count()} cores shared with "
          f"other work), medians of {args.repeat} runs; reference {args.reference_samples} samples")
    print("| tasks | samples per task | render s (marker) | share | task CPU s | share | task wall s | share "
          "| finish (merge) wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    one = med[1]
    for n in counts:
        w, c, r = med[n]
        merge = f"{statistics.median(finish[n]):.2f}" if finish[n] else "-"
        print(f"| {n} | {args.samples // n} | {r:.2f} | {r / one[2]:.2f} | {c:.2f} | {c / one[1]:.2f} | {w:.2f} | "
              f"{w / one[0]:.2f} | {merge} |")
    print(f"RMSE vs reference: single render {found['single']['rmse']:.5f}; " + "; ".join(
        f"{name} {found['images'][path]['rmse']:.5f} (vs the single render {found['images'][path]['vs_single']:.1e})"
        for name, path in images.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
