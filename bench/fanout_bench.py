"""One animation over several clusters against each cluster alone, on the test cluster (tests/testbed).

Clusters: `tbfast` (the test cluster's qcpu partition), `tbslow` (its qhigh partition on the other node,
with 4 s of module loading per task, like a site whose shared file system is slow) and `local` (this
computer's queue). Each runs one task at a time (--max-parallel 1), one frame per task, so a cluster's
speed is its cost per task. For each round, interleaved: the film on every cluster alone, then as one
group over all of them (and over the two clusters only). Time: from `submit` to the end of `wait`, as a
user waits. Reported: each configuration's median, the group's ratio to the best cluster alone, and
how many frames each cluster of a group rendered.

Run as root with the testbed up: python3 bench/fanout_bench.py [--frames 16] [--samples 4] [--repeat 2]
Everything the CLI writes goes to a temporary config/data directory (presets copied from root's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import make_sample  # noqa: E402  (the sample scene, built with the shipped generator)

FILM = ["--chunk", "1", "--max-parallel", "1", "--resolution-percentage", "10"]


def cli(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "braas_hpc.cli", *args, "--json"], capture_output=True, text=True,
                          env=env, timeout=3600, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"braas-hpc {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return json.loads(done.stdout)


def presets(config: Path) -> None:
    text = (config / "presets" / "testbed.toml").read_text()
    (config / "presets" / "tbfast.toml").write_text(text.replace('name = "testbed"', 'name = "tbfast"'))
    slow = text.replace('name = "testbed"', 'name = "tbslow"').replace('"qcpu"', '"qhigh"')
    (config / "presets" / "tbslow.toml").write_text(slow.replace("env = []", 'env = ["sleep 4"]'))


def run(env: dict[str, str], scene: Path, preset: str, frames: int, samples: int) -> tuple[float, dict]:
    started = time.monotonic()
    job = cli(env, "submit", str(scene), "--preset", preset, "--frames", f"1-{frames}", *FILM, "--samples",
              str(samples))["job"]
    final = cli(env, "wait", job, "--timeout", "3000")
    if final["state"] != "COMPLETED":
        raise SystemExit(f"{preset}: {final}")
    return time.monotonic() - started, final


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="more: a frame costs more than Blender's start")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    config = work / "config"
    shutil.copytree(Path.home() / ".config" / "braas-hpc", config)
    presets(config)
    env = {**os.environ, "BRAAS_HPC_CONFIG_DIR": str(config), "BRAAS_HPC_DATA_DIR": str(work / "data")}
    scene = make_sample(work / "scene")
    configurations = ["tbfast", "tbslow", "local", "tbfast,tbslow", "tbfast,tbslow,local"]
    times: dict[str, list[float]] = {c: [] for c in configurations}
    shares: dict[str, list[dict[str, int]]] = {c: [] for c in configurations if "," in c}
    for round_ in range(args.repeat):
        for configuration in configurations:
            seconds, final = run(env, scene, configuration, args.frames, args.samples)
            times[configuration].append(seconds)
            if "," in configuration:
                shares[configuration].append({m["preset"]: m["frames_done"] for m in final["members"]})
            print(f"round {round_ + 1}: {configuration:<20} {seconds:6.1f} s "
                  f"{shares[configuration][-1] if ',' in configuration else ''}", flush=True)
    medians = {c: statistics.median(t) for c, t in times.items()}
    print(f"\n{args.frames} frames of {args.samples} samples, one per task, one task at a time per cluster; "
          f"medians of {args.repeat}:")
    for configuration, seconds in medians.items():
        line = f"  {configuration:<20} {seconds:6.1f} s"
        if "," in configuration:
            best = min(medians[p] for p in configuration.split(","))
            line += f"  = {seconds / best:.2f} x the best of its clusters alone; frames: {shares[configuration]}"
        print(line)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
