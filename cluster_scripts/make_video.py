"""A movie from a job's frames, with ffmpeg: on the cluster in the finish step, or on this computer.

Usage: [blender -b --factory-startup -P] make_video.py -- --frames-dir DIR --frames-file FILE --extension EXT
           --codec h264|prores|av1 --fps N --ffmpeg CMD --out PATH [--allow-gaps]
           [--view-transform T --look L --exposure E --gamma G --display D]

The frames are taken in the job's order (FILE: frame numbers, comma- or line-separated), so a job that
rendered every second frame gives a movie of consecutive pictures. EXR frames hold scene-linear light:
Blender turns each into a display-referred PNG with the scene's view transform, look, exposure and gamma
first (only inside Blender); PNG, JPEG and TIFF frames are already display-referred and go as they are.
Frames of an odd width or height get one black row or column (the codecs need even sizes). The movie is
written under a hidden temp name beside PATH and renamed at the end: a failed run leaves nothing.

Prints `braas-hpc video: {json}` last (frames, size, encoder, seconds); exit 0 when the movie was written,
1 when it could not be (the reason on stderr), 2 on bad arguments. Standard library only (and bpy for EXR).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

CODECS = ("h264", "prores", "av1")
CONTAINERS = {"h264": "mp4", "prores": "mov", "av1": "mp4"}
# The encoders each codec can use, in the order tried; the first this ffmpeg has wins.
ENCODERS = {"h264": ("libx264", "libopenh264"), "prores": ("prores_ks",),
            "av1": ("libsvtav1", "libaom-av1", "librav1e")}
ENCODER_ARGS = {
    "libx264": ["-pix_fmt", "yuv420p", "-crf", "18", "-preset", "medium"],
    "libopenh264": ["-pix_fmt", "yuv420p", "-b:v", "20M"],
    "prores_ks": ["-profile:v", "3", "-pix_fmt", "yuv422p10le", "-vendor", "apl0"],
    "libsvtav1": ["-pix_fmt", "yuv420p", "-crf", "30", "-preset", "8"],
    "libaom-av1": ["-pix_fmt", "yuv420p", "-crf", "30", "-b:v", "0", "-cpu-used", "8", "-row-mt", "1"],
    "librav1e": ["-pix_fmt", "yuv420p", "-qp", "80", "-speed", "8"],
}
EXTENSIONS = ("png", "jpg", "tif", "exr")
EVEN_SIZE = "pad=ceil(iw/2)*2:ceil(ih/2)*2"  # one black row/column where a side is odd: no pixel is lost
MISSING_LISTED = 20
REPORT_PREFIX = "braas-hpc video: "


class VideoError(Exception):
    """Why no movie could be made, in words a user can act on."""


def video_file_name(codec: str, fps: float) -> str:
    """`video-h264-24fps.mp4`: codec and rate in the name, so a movie made here never replaces the cluster's."""
    rate = f"{fps:.3f}".rstrip("0").rstrip(".")
    return f"video-{codec}-{rate}fps.{CONTAINERS[codec]}"


def read_frames(path: str) -> list[int]:
    with open(path, encoding="utf-8") as stream:
        frames = {int(f) for line in stream for f in re.split(r"[,\s]+", line) if f.strip()}
    return sorted(frames)


def frame_path(frames_dir: str, frame: int, extension: str) -> str:
    return os.path.join(frames_dir, f"frame_{frame:06d}.{extension}")


def sequence(frames_dir: str, frames: list[int], extension: str, allow_gaps: bool) -> tuple[list[str], list[int]]:
    """The file of each picture of the movie. A missing frame is refused with the list of them all; with
    `allow_gaps` it shows the frame before it (the first frames, the first one there), so timing holds.
    Returns the files and the missing frames."""
    present = {f: p for f in frames if os.path.isfile(p := frame_path(frames_dir, f, extension))
               and os.path.getsize(p) > 0}
    if not present:
        raise VideoError(f"no frame of the job is in {frames_dir} (frame_NNNNNN.{extension}): download the frames "
                         "first")
    missing = [f for f in frames if f not in present]
    if missing and not allow_gaps:
        shown = ", ".join(str(f) for f in missing[:MISSING_LISTED])
        more = f" and {len(missing) - MISSING_LISTED} more" if len(missing) > MISSING_LISTED else ""
        raise VideoError(f"{len(missing)} frame(s) missing: {shown}{more}; render them again (resubmit), or make "
                         "the movie anyway with --allow-gaps (a missing frame shows the one before it)")
    files, last = [], present[min(present)]
    for frame in frames:
        last = present.get(frame, last)
        files.append(last)
    return files, missing


def encoders(ffmpeg: list[str]) -> set[str]:
    """The video encoders this ffmpeg has (`ffmpeg -encoders`)."""
    try:
        done = subprocess.run([*ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise VideoError(f"cannot run ffmpeg ({' '.join(ffmpeg)}): {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise VideoError(f"ffmpeg ({' '.join(ffmpeg)}) failed to list its encoders: {done.stderr.strip()[-300:]}")
    return {m.group(1) for m in re.finditer(r"^ V\S{5} (\S+)", done.stdout, re.M)}


def pick_encoder(codec: str, have: set[str]) -> str:
    for encoder in ENCODERS[codec]:
        if encoder in have:
            return encoder
    raise VideoError(f"this ffmpeg cannot encode {codec}: it has none of the encoders {', '.join(ENCODERS[codec])}; "
                     "use an ffmpeg built with one of them, or choose another codec")


def rate(fps: float) -> str:
    """The frame rate as ffmpeg takes it exactly: 24 -> 24/1, 23.976 -> 24000/1001."""
    return str(Fraction(fps).limit_denominator(1001))


def tone_map(files: list[str], work: str, view: dict[str, object], depth: str) -> list[str]:
    """Each EXR saved as a display-referred PNG by Blender with the scene's colour management (inside Blender).
    A frame shown twice (a gap) is converted once."""
    import bpy  # only inside Blender

    scene = bpy.context.scene
    try:
        scene.display_settings.display_device = str(view.get("display") or "sRGB")
        scene.view_settings.view_transform = str(view.get("view_transform") or "Standard")
        scene.view_settings.look = str(view.get("look") or "None")
    except TypeError as exc:  # an enum value this Blender does not know: bpy says which
        raise VideoError(f"this Blender cannot apply the scene's colour management: {exc}") from None
    scene.view_settings.exposure = float(view.get("exposure") or 0.0)  # type: ignore[arg-type]
    scene.view_settings.gamma = float(view.get("gamma") or 1.0)  # type: ignore[arg-type]
    settings = scene.render.image_settings
    settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", depth
    done: dict[str, str] = {}
    for index, source in enumerate(files):
        if source not in done:
            target = os.path.join(work, f"tone_{index:06d}.png")
            image = bpy.data.images.load(source, check_existing=False)
            try:
                image.save_render(target, scene=scene)
            finally:
                bpy.data.images.remove(image)
            if not os.path.isfile(target):
                raise VideoError(f"Blender could not convert {source} to a PNG")
            done[source] = target
    return [done[source] for source in files]


def link_sequence(files: list[str], work: str, extension: str) -> str:
    """Numbered names ffmpeg reads in order (links where the system has them, else copies); the pattern."""
    for index, source in enumerate(files):
        target = os.path.join(work, f"seq_{index:06d}.{extension}")
        try:
            os.symlink(os.path.abspath(source), target)
        except OSError:
            shutil.copyfile(source, target)
    return os.path.join(work, f"seq_%06d.{extension}")


def encode_argv(ffmpeg: list[str], pattern: str, fps: float, encoder: str, out: str) -> list[str]:
    return [*ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-framerate", rate(fps),
            "-start_number", "0", "-i", pattern, "-vf", EVEN_SIZE, "-c:v", encoder, *ENCODER_ARGS[encoder],
            *(["-movflags", "+faststart"] if out.endswith(".mp4") else []), out]


def check_request(codec: str, fps: float, extension: str) -> None:
    if codec not in CODECS:
        raise VideoError(f"codec {codec!r} is not one of {', '.join(CODECS)}")
    if not 0 < fps <= 1000:
        raise VideoError(f"frame rate must be above 0 and at most 1000, got {fps}")
    if extension not in EXTENSIONS:
        raise VideoError(f"frames of type {extension!r} cannot make a movie (one of {', '.join(EXTENSIONS)})")


def make_video(frames_dir: str, frames: list[int], extension: str, codec: str, fps: float, ffmpeg: list[str],
               out: str, allow_gaps: bool = False, view: dict[str, object] | None = None) -> dict[str, object]:
    """The movie at `out` (written under a temp name, renamed when whole); what was done, for the report."""
    check_request(codec, fps, extension)
    started = time.monotonic()
    files, missing = sequence(frames_dir, frames, extension, allow_gaps)
    encoder = pick_encoder(codec, encoders(ffmpeg))
    directory, name = os.path.split(os.path.abspath(out))
    temp = os.path.join(directory, f".{name}.part{os.path.splitext(name)[1]}")
    work = tempfile.mkdtemp(prefix=".video-", dir=directory)
    try:
        tone_s = 0.0
        if extension == "exr":
            files = tone_map(files, work, view or {}, "16" if codec == "prores" else "8")
            extension, tone_s = "png", time.monotonic() - started
        pattern = link_sequence(files, work, extension)
        encode_started = time.monotonic()
        done = subprocess.run(encode_argv(ffmpeg, pattern, fps, encoder, temp), capture_output=True, text=True,
                              timeout=max(600, 10 * len(files)))
        if done.returncode != 0 or not os.path.isfile(temp):
            raise VideoError(f"ffmpeg could not encode the movie ({encoder}): {done.stderr.strip()[-500:]}")
        encode_s = time.monotonic() - encode_started
        os.replace(temp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if os.path.lexists(temp):
            os.unlink(temp)
    return {"video": out, "codec": codec, "encoder": encoder, "fps": fps, "frames": len(files),
            "gaps": missing,
            "tone_map_seconds": round(tone_s, 3), "encode_seconds": round(encode_s, 3)}


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """The scene's colour management, for EXR frames (here and in the finish step's arguments)."""
    parser.add_argument("--view-transform", default="Standard")
    parser.add_argument("--look", default="None")
    parser.add_argument("--exposure", type=float, default=0.0)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--display", default="sRGB")


def view_of(args: argparse.Namespace) -> dict[str, object]:
    return {"view_transform": args.view_transform, "look": args.look, "exposure": args.exposure,
            "gamma": args.gamma, "display": args.display}


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    parser = argparse.ArgumentParser(prog="make_video.py")
    parser.add_argument("--frames-dir", required=True)
    parser.add_argument("--frames-file", required=True, help="the job's frames (its frames.txt will do)")
    parser.add_argument("--extension", required=True, choices=EXTENSIONS)
    parser.add_argument("--codec", required=True, choices=CODECS)
    parser.add_argument("--fps", required=True, type=float)
    parser.add_argument("--ffmpeg", required=True, help="the ffmpeg command (a path, or a name on PATH)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--allow-gaps", action="store_true")
    add_view_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        report = make_video(args.frames_dir, read_frames(args.frames_file), args.extension, args.codec, args.fps,
                            [args.ffmpeg], args.out, args.allow_gaps, view_of(args))
    except (VideoError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"braas-hpc video: no movie: {exc}", file=sys.stderr, flush=True)
        return 1
    print(REPORT_PREFIX + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
