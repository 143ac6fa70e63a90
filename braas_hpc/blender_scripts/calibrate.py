"""Runs inside Blender on the user's computer: times the scene's render at reduced settings, for estimates.

Usage: blender -b SCENE.blend -Y -P calibrate.py -- --report REPORT.json --out DIR --percentage P --samples S1,S2
       [--frame F] [--scene NAME] [--threads N]

Renders one frame once at one sample (not timed: what a first render loads), then once per sample count
at P % of the scene's resolution, each written into OUT as a job writes its frames (nothing is written
beside the scene), and reports each render's seconds with the scene's own resolution, percentage
and samples, so the caller can scale to the job's settings. Exit 0 when timed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import bpy


def _args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="calibrate.py")
    parser.add_argument("--report", required=True)
    parser.add_argument("--percentage", type=int, required=True)
    parser.add_argument("--samples", required=True)
    parser.add_argument("--frame", type=int, default=None)
    parser.add_argument("--scene", default="")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True, help="a private folder the timed frames are written to, as a job does")
    return parser.parse_args(argv)


def main() -> int:
    args = _args()
    scene = bpy.data.scenes[args.scene] if args.scene else bpy.context.scene
    if bpy.context.window is not None:
        bpy.context.window.scene = scene
    render = scene.render
    own = {"resolution": [render.resolution_x, render.resolution_y], "percentage": render.resolution_percentage,
           "samples": scene.cycles.samples if render.engine == "CYCLES" else 0, "engine": render.engine,
           "frame": scene.frame_current}
    if args.frame is not None:
        scene.frame_set(args.frame)
    render.resolution_percentage = args.percentage
    if args.threads:
        render.threads_mode = "FIXED"
        render.threads = args.threads
    # A first render loads what every later one reuses (kernels, textures): it belongs to the task's start-up,
    # so it is made once, at one sample, and not timed as a frame.
    if render.engine == "CYCLES":
        scene.cycles.samples = 1
    bpy.ops.render.render(write_still=False, scene=scene.name)
    timings = []
    for index, samples in enumerate(int(s) for s in args.samples.split(",")):
        if render.engine == "CYCLES":
            scene.cycles.samples = samples
        render.filepath = os.path.join(args.out, f"calibration_{index}")  # the scene's own format, as a job writes
        started = time.monotonic()
        bpy.ops.render.render(write_still=True, scene=scene.name)
        timings.append({"samples": samples, "seconds": time.monotonic() - started})
    with open(args.report, "w", encoding="utf-8") as stream:
        json.dump({"scene": own, "percentage": args.percentage, "timings": timings,
                   "threads": render.threads}, stream)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception as exc:  # noqa: BLE001 - reported to the caller, which shows it
        print(f"braas-hpc calibrate: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)
