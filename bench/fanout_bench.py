"""One animation over several clusters against each cluster alone, on the test cluster (tests/testbed).

Clusters: `tbfast` (the test cluster's qcpu partition), `tbslow` (its qhigh partition on the other node,
with 4 s of module loading per task, like a site whose shared file system is slow) and `local` (this
computer's queue). Each runs one task at a time (--max-parallel 1), one frame per task, so a cluster's
speed is its cost per task. For each round, interleaved: the film on every cluster alone, then as one
group over all of them (and over the two clusters only). Time: from `submit` to the end of `wait`, as a
user waits. Reported: each configuration's median, the group's ratio to the best cluster alone, how
many frames each cluster of a group rendered, and what became of the tasks whose chunks moved to another
cluster: cancelled before they started, or started (Blender's start, to find the chunk gone).

Run as root with the testbed up: python3 bench/fanout_bench.py [--frames 16] [--samples 4] [--repeat 2]
Everything the CLI writes goes to a temporary config/data directory (presets copied from root's).
"""

from __future__ import annotations

import argparse
import asyncio
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


def moved_tasks(final: dict) -> tuple[int, int]:
    """(cancelled before they started, started) of the group's tasks whose chunks moved: a task that ran
    wrote its marker itself (with its host); the driver writes one without for a task it cancelled."""
    from braas_hpc.core.context import job_context
    from braas_hpc.core.recovery import read_markers

    async def markers(job: str) -> list[dict]:
        context = job_context(job)
        return await read_markers(context.transport, context.paths)

    moved = [m for member in final["members"] if member["job"] for m in asyncio.run(markers(member["job"]))
             if m.get("state") == "moved"]
    return sum(1 for m in moved if "host" not in m), sum(1 for m in moved if "host" in m)


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
    os.environ.update(env)  # this process reads the groups' task markers with the same registry
    scene = make_sample(work / "scene")
    configurations = ["tbfast", "tbslow", "local", "tbfast,tbslow", "tbfast,tbslow,local"]
    times: dict[str, list[float]] = {c: [] for c in configurations}
    shares: dict[str, list[dict[str, int]]] = {c: [] for c in configurations if "," in c}
    moves: dict[str, list[tuple[int, int]]] = {c: [] for c in shares}
    for round_ in range(args.repeat):
        for configuration in configurations:
            seconds, final = run(env, scene, configuration, args.frames, args.samples)
            times[configuration].append(seconds)
            if "," in configuration:
                shares[configuration].append({m["preset"]: m["frames_done"] for m in final["members"]})
                moves[configuration].append(moved_tasks(final))
            print(f"round {round_ + 1}: {configuration:<20} {seconds:6.1f} s "
                  f"{shares[configuration][-1] if ',' in configuration else ''}", flush=True)
    medians = {c: statistics.median(t) for c, t in times.items()}
    print(f"\n{args.frames} frames of {args.samples} samples, one per task, one task at a time per cluster; "
          f"medians of {args.repeat}:")
    for configuration, seconds in medians.items():
        line = f"  {configuration:<20} {seconds:6.1f} s"
        if "," in configuration:
            best = min(medians[p] for p in configuration.split(","))
            line += (f"  = {seconds / best:.2f} x the best of its clusters alone; frames: {shares[configuration]}; "
                     f"tasks of moved chunks (cancelled before starting, started): {moves[configuration]}")
        print(line)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
