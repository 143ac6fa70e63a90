"""The finish step, run once after every task of a round has ended (dependency afterany).

Usage: blender -b --factory-startup -Y -t 1 -P finish_task.py -- --job-dir DIR [--format PNG] [--round N]
   or: python3 finish_task.py --job-dir DIR   (the summary without a thumbnail)

First it recovers: frames the round lost go to the cluster again as the next round, with its own finish
step, while retries are left and the user has not cancelled (braas_hpc.core.rounds.recover_here, from
the core kit installed beside this file): the client need not be there.

Checks every frame of the job (line K of DIR/frames.txt holds task K's frames) and writes
DIR/summary.json: frames ok and missing, seconds per frame, core-hours and GPU-hours from the task
markers (status/*.json), and DIR/thumb.jpg, a small JPEG of the last frame, made by Blender.
Exit 0 when the summary was written, whatever it says; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # jsonfile.py, make_video.py: installed beside it
import make_video  # noqa: E402
from jsonfile import write_json_atomic  # noqa: E402
from preview import write_jpeg  # noqa: E402

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "OPEN_EXR": "exr", "OPEN_EXR_MULTILAYER": "exr", "TIFF": "tif"}
THUMB_WIDTH = 256


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
    parser = argparse.ArgumentParser(prog="finish_task.py")
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--format", choices=sorted(EXTENSIONS), default="PNG")
    parser.add_argument("--round", type=int, default=-1, help="the round this step finishes (-1: no recovery)")
    # A movie of the frames (make_video.py), with the scene's frame rate and colour management.
    parser.add_argument("--video", default="", help="codec of a movie to make once every frame is there")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--ffmpeg", default="ffmpeg")
    make_video.add_view_arguments(parser)
    return parser.parse_args(argv)


def recover(job_dir: str, round_number: int) -> str:
    """The lost frames of the round, submitted again by the cluster itself (core.rounds.recover_here)."""
    kit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "braas_core.zip")
    if round_number < 0 or not os.path.isfile(kit):
        return "no recovery here (no round given, or no core kit installed): the client recovers"
    sys.path.insert(0, kit)
    try:
        from braas_hpc.core.rounds import recover_here

        return recover_here(job_dir, round_number)
    except Exception as exc:  # noqa: BLE001 - the summary still matters, and the client can still recover
        return f"recovery failed ({type(exc).__name__}: {exc}); the client recovers when it looks"


def job_frames(job_dir: str, markers: list[dict] | None = None) -> list[int]:
    """Every frame of the job: round 0's frames file lists them all (resubmissions only repeat some). A
    member of a job over several clusters also holds the frames its later rounds were given, less the
    chunks another cluster took (their tasks' markers say `moved`)."""
    frames: set[int] = set()
    for path in [os.path.join(job_dir, "frames.txt"), *glob.glob(os.path.join(job_dir, "frames-r*.txt"))]:
        with open(path, encoding="utf-8") as stream:
            frames |= {int(f) for line in stream for f in line.strip().split(",") if f.strip()}
    gone = {f for m in markers or () if m.get("state") == "moved" for f in m.get("frames") or ()}
    kept = {f for m in markers or () if m.get("state") != "moved" for f in m.get("frames") or ()}
    return sorted(frames - (gone - kept))


def read_markers(job_dir: str) -> list[dict]:
    markers = []
    for path in sorted(glob.glob(os.path.join(job_dir, "status", "*task-*.json"))):
        try:
            with open(path, encoding="utf-8") as stream:
                marker = json.load(stream)
        except (OSError, ValueError):
            continue  # a marker being replaced right now, or damaged: the frames still count
        # A task killed mid-run never wrote "finished": its last write is when it was last alive.
        marker.setdefault("finished", None)
        marker["_ended"] = marker["finished"] or os.path.getmtime(path)
        marker["_name"] = os.path.basename(path)
        markers.append(marker)
    return markers


def summarize(job_dir: str, extension: str, markers: list[dict]) -> dict:
    frames = job_frames(job_dir, markers)
    out = os.path.join(job_dir, "out")

    def present(frame: int) -> bool:
        path = os.path.join(out, f"frame_{frame:06d}.{extension}")
        return os.path.isfile(path) and os.path.getsize(path) > 0

    ok = [f for f in frames if present(f)]
    timings: dict[str, float] = {}
    core_s = gpu_s = task_s = 0.0
    for marker in markers:
        timings.update({str(k): float(v) for k, v in (marker.get("timings") or {}).items()})
        elapsed = max(0.0, float(marker["_ended"]) - float(marker.get("started") or marker["_ended"]))
        task_s += elapsed
        core_s += elapsed * int(marker.get("threads") or 1)
        gpu_s += elapsed * int(marker.get("gpus") or 0)
    seconds = sorted(timings.values())
    starts = [float(m["started"]) for m in markers if m.get("started")]
    return {
        "job": os.path.basename(os.path.normpath(job_dir)),
        "frames_total": len(frames), "frames_ok": len(ok),
        "missing": [f for f in frames if f not in set(ok)],
        "seconds_per_frame": {"mean": round(sum(seconds) / len(seconds), 3), "min": seconds[0],
                              "max": seconds[-1]} if seconds else {},
        "timings": timings,
        "tasks": len(markers),
        "tasks_failed": [m["_name"] for m in markers if m.get("exit_code") != 0],
        "core_hours": round(core_s / 3600, 6), "gpu_hours": round(gpu_s / 3600, 6),
        "wall_seconds": round(max(m["_ended"] for m in markers) - min(starts), 3) if starts else 0.0,
        "task_seconds": round(task_s, 3),  # every task's time in Blender, start-up included (estimates use it)
        "threads": max((int(m.get("threads") or 0) for m in markers), default=0),
        "last_frame": f"frame_{ok[-1]:06d}.{extension}" if ok else "",
        "written": time.time(),
    }


def with_estimate(job_dir: str, summary: dict) -> dict:
    """The estimate made before Submit (job.json's "estimate"), beside the actual: each figure's ratio."""
    try:
        with open(os.path.join(job_dir, "job.json"), encoding="utf-8") as stream:
            expected = json.load(stream).get("estimate")
    except (OSError, ValueError):
        expected = None
    if not isinstance(expected, dict):
        return summary
    actual = {"wall_seconds": summary["wall_seconds"], "core_hours": summary["core_hours"],
              "gpu_hours": summary["gpu_hours"], "frame_seconds": (summary["seconds_per_frame"] or {}).get("mean")}
    ratios = {k: round(actual[k] / expected[k], 3) for k in actual
              if isinstance(expected.get(k), (int, float)) and expected[k] > 0 and actual[k] is not None}
    return {**summary, "estimate": expected, "actual_vs_estimate": ratios}


def thumbnail(source: str, target: str, width: int = THUMB_WIDTH) -> None:
    """A small JPEG of a frame, made by Blender; an EXR shown through Blender's default view transform."""
    import bpy  # only inside Blender; the summary needs none of it

    write_jpeg(source, target, width, bpy.context.scene)


def movie(args: argparse.Namespace, summary: dict, extension: str) -> dict:
    """The movie of the job's frames into out/, once none is missing (a later round's finish makes it
    otherwise): what to add to the summary, its name or why there is none."""
    if summary["missing"]:
        return {"video_error": f"not made: {len(summary['missing'])} frame(s) missing"}
    out = os.path.join(args.job_dir, "out")
    try:
        made = make_video.make_video(out, job_frames(args.job_dir), extension, args.video, args.fps, [args.ffmpeg],
                                     os.path.join(out, make_video.video_file_name(args.video, args.fps)),
                                     view=make_video.view_of(args))
    except (make_video.VideoError, OSError, make_video.subprocess.TimeoutExpired) as exc:
        return {"video_error": str(exc)}
    return {"video": os.path.basename(str(made["video"])), "video_encoder": made["encoder"],
            "video_seconds": round(float(made["tone_map_seconds"]) + float(made["encode_seconds"]), 3)}


def split_spec(job_dir: str) -> dict | None:
    """job.json's spec when the job is a split still (its frames are parts of one frame), else None."""
    try:
        with open(os.path.join(job_dir, "job.json"), encoding="utf-8") as stream:
            spec = json.load(stream).get("spec") or {}
    except (OSError, ValueError):
        return None
    return spec if spec.get("part_samples") else None


def merge_split(job_dir: str, spec: dict, extension: str, summary: dict) -> dict:
    """A split still: its parts merged and denoised into the frame (merge_parts.py), and the summary
    counting that frame, with the parts beside it."""
    try:
        import merge_parts  # needs bpy: only inside Blender

        merged = merge_parts.merge_still(job_dir, spec, extension)
    except ImportError as exc:
        merged = {"merged": False, "error": f"no merge outside Blender ({exc})"}
    frame = int(spec["split_frame"])
    name = f"frame_{frame:06d}.{extension}"
    path = os.path.join(job_dir, "out", name)
    ok = os.path.isfile(path) and os.path.getsize(path) > 0
    print(f"braas-hpc finish: split still {name}: {merged}", flush=True)
    return {**summary, "frames_total": 1, "frames_ok": int(ok), "missing": [] if ok else [frame],
            "last_frame": name if ok else "", "split": merged}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print(f"braas-hpc finish: {recover(args.job_dir, args.round)}", flush=True)
    extension = EXTENSIONS[args.format]
    summary = with_estimate(args.job_dir, summarize(args.job_dir, extension, read_markers(args.job_dir)))
    if (spec := split_spec(args.job_dir)) is not None:
        summary = merge_split(args.job_dir, spec, extension, summary)
    summary["thumbnail"] = ""
    if summary["last_frame"]:
        try:
            thumbnail(os.path.join(args.job_dir, "out", summary["last_frame"]), os.path.join(args.job_dir, "thumb.jpg"))
            summary["thumbnail"] = "thumb.jpg"
        except Exception as exc:  # noqa: BLE001 - no thumbnail must not cost the summary
            summary["thumbnail_error"] = f"{type(exc).__name__}: {exc}"
    write_json_atomic(os.path.join(args.job_dir, "summary.json"), summary)
    if args.video:  # after the summary is written: a movie cut short by the time limit must not cost it
        summary.update(movie(args, summary, extension))
        print(f"braas-hpc finish: movie {summary.get('video') or summary.get('video_error')}", flush=True)
        write_json_atomic(os.path.join(args.job_dir, "summary.json"), summary)
    print(f"braas-hpc finish: {summary['frames_ok']}/{summary['frames_total']} frames, missing "
          f"{summary['missing'] or 'none'}, {summary['core_hours']} core-hours, {summary['gpu_hours']} GPU-hours",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
