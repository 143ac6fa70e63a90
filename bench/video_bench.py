"""Movies of 1920x1080 frames: seconds per frame for each codec, and for Blender's EXR conversion.

Renders the sample scene at 1920x1080 (1 sample, the `local` preset) as PNG and as EXR frames, then
makes each codec's movie of them with cluster_scripts/make_video.py and the ffmpeg of imageio-ffmpeg,
as `braas-hpc video` does here and the finish step does on a cluster. The baseline, in the same run:
ffmpeg only decoding the same PNGs (what every encode also does), so a ratio says what encoding adds.

    python3 bench/video_bench.py [--frames 24] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.core import video  # noqa: E402
from braas_hpc.core.local_blender import local_blender  # noqa: E402
from tests.helpers import make_sample  # noqa: E402


def render(scene: Path, frames: int, image_format: str, out: Path) -> None:
    argv = [sys.executable, "-m", "braas_hpc.cli", "render", str(scene), "--frames", f"1-{frames}", "--chunk",
            str(frames), "--format", image_format, "--resolution-percentage", "1000", "--samples", "1", "--out",
            str(out), "--json"]
    subprocess.run(argv, check=True, capture_output=True, timeout=3600)


def decode_only(ffmpeg: str, frames_dir: Path) -> float:
    started = time.monotonic()
    subprocess.run([ffmpeg, "-v", "error", "-framerate", "24", "-start_number", "1", "-i",
                    str(frames_dir / "frame_%06d.png"), "-f", "null", "-"], check=True, timeout=600)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--keep", metavar="DIR", help="work here and keep the frames (default: a temp folder)")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="braas-video-bench-"))
    os.environ.setdefault("BRAAS_HPC_DATA_DIR", str(work / "data"))
    os.environ.setdefault("BRAAS_HPC_CONFIG_DIR", str(work / "config"))
    module, ffmpeg = video.make_video_module(), video.bundled_ffmpeg()
    scene = make_sample(work / "project")
    frames = list(range(1, args.frames + 1))
    for image_format, folder in (("PNG", "png"), ("OPEN_EXR", "exr")):
        if not (work / folder / f"frame_{args.frames:06d}.{folder}").is_file():
            render(scene, args.frames, image_format, work / folder)
    baseline = decode_only(ffmpeg, work / "png") / args.frames
    rows = []
    for codec in module.CODECS:
        made = module.make_video(str(work / "png"), frames, "png", codec, 24, [ffmpeg],
                                 str(work / "png" / module.video_file_name(codec, 24)))
        per_frame = float(made["encode_seconds"]) / args.frames
        rows.append({"codec": codec, "encoder": made["encoder"], "s_per_frame": round(per_frame, 3),
                     "x_decode": round(per_frame / baseline, 1)})
    # EXR: the conversion by Blender (with the H.264 encode after it), as the finish step runs it.
    frames_file = work / "frames.txt"
    frames_file.write_text(",".join(map(str, frames)) + "\n")
    done = subprocess.run([*local_blender(), "-b", "--factory-startup", "-P", str(video.MAKE_VIDEO), "--",
                           "--frames-dir", str(work / "exr"), "--frames-file", str(frames_file), "--extension", "exr",
                           "--codec", "h264", "--fps", "24", "--ffmpeg", ffmpeg,
                           "--out", str(work / "exr" / "video.mp4"), "--view-transform", "AgX"],
                          capture_output=True, text=True, timeout=3600, check=True)
    report = json.loads(done.stdout.splitlines()[-1].removeprefix(module.REPORT_PREFIX))
    exr = float(report["tone_map_seconds"]) / args.frames
    print(json.dumps({"frames": args.frames, "size": "1920x1080", "decode_s_per_frame": round(baseline, 3),
                      "codecs": rows, "exr_to_png_s_per_frame": round(exr, 3),
                      "exr_x_decode": round(exr / baseline, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
