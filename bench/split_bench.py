"""Split stills: the time of each part against the time of the whole still, and the merged image's error.

One still rendered by the real render task and finish step on the `local` preset (one task at a time,
every core: each task's time is its own), as an ordinary job and as --split-samples N for each N given,
interleaved. Reported per N: each part's render time (the task marker's) as a share of the single
render's, the task's time from its marker's start (scene loaded; Blender's own start not included), and
the RMSE against a high-sample reference of the single render, one part and the merge
(tests/split_images.py).

    python3 bench/split_bench.py [--size 320 180] [--samples 256] [--parts 2,4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tests" / "split_images.py"


def cli(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "braas_hpc.cli", *args, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"braas-hpc {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout)


def task_times(job_dir: Path) -> list[tuple[float, float]]:
    """(render seconds, whole task seconds) per task, from its marker."""
    times = []
    for path in sorted((job_dir / "status").glob("task-*.json")):
        marker = json.loads(path.read_text())
        times.append((sum(marker["timings"].values()), marker["finished"] - marker["started"]))
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, nargs=2, default=(320, 180))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--parts", default="2,4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference-samples", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="split-bench-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "BRAAS_HPC_CONFIG_DIR": str(work / "config"), "BRAAS_HPC_DATA_DIR": str(work / "data")}
        scene = work / "still.blend"
        subprocess.run([sys.executable, str(TOOL), "scene", str(scene), "--size", *map(str, args.size),
                        "--samples", str(args.samples)], check=True, capture_output=True, timeout=600)
        counts = [1, *(int(n) for n in args.parts.split(","))]
        render: dict[int, list[float]] = {n: [] for n in counts}
        whole: dict[int, list[float]] = {n: [] for n in counts}
        images: dict[str, str] = {}
        for attempt in range(args.repeat):  # interleaved: a busy moment of the machine spreads over every N
            for parts in counts:
                split = ["--split-samples", str(parts)] if parts > 1 else []
                out = work / f"out-{parts}-{attempt}"
                job = cli(env, "render", str(scene), *split, "--out", str(out))
                times = task_times(Path(job["job_dir"]))
                render[parts] += [t[0] for t in times]
                whole[parts] += [t[1] for t in times]
                if attempt == 0 and parts > 1:
                    images[f"merged {parts}"] = str(out / "frame_000001.exr")
                    images[f"part of {parts}"] = str(Path(job["job_dir"]) / "out" / "frame_000001.part001.exr")
        rows = {n: (statistics.median(render[n]), statistics.median(whole[n])) for n in counts}
        done = subprocess.run([sys.executable, str(TOOL), "measure", str(scene), str(work / "measure"),
                               *images.values(), "--reference-samples", str(args.reference_samples)],
                              capture_output=True, text=True, timeout=3600, check=True)
        found = json.loads(done.stdout.strip().splitlines()[-1])
    single_render, single_whole = rows[1]
    print(f"{args.size[0]}x{args.size[1]} px, {args.samples} samples, CPU ({os.cpu_count()} cores), median of "
          f"{args.repeat}; reference {args.reference_samples} samples")
    print("| tasks | samples per task | render s per task | share of single | task s (scene load to end) | share |")
    print("|---|---|---|---|---|---|")
    for parts, (render, whole) in rows.items():
        print(f"| {parts} | {args.samples // parts} | {render:.2f} | {render / single_render:.2f} "
              f"(1/N = {1 / parts:.2f}) | {whole:.2f} | {whole / single_whole:.2f} |")
    print(f"RMSE vs reference: single render {found['single']['rmse']:.5f}; " + "; ".join(
        f"{name} {found['images'][path]['rmse']:.5f}" for name, path in images.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
