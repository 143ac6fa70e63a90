"""What tests measure of a movie, with the ffmpeg imageio-ffmpeg ships (there is no ffprobe here): the
frame count by decoding every frame (imageio_ffmpeg.count_frames_and_secs), the size and codec from
`ffmpeg -i`, the first picture as RGB bytes, and the mean difference of two pictures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
from PIL import Image

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
SIZE = (33, 19)  # odd on both sides: the codecs need even sizes, the movie gets a black row and column
FPS = 12
# A movie's pictures and Blender's PNG are compared in 4x4 blocks: 4:2:0 and 4:2:2 keep colour at half
# resolution by design, which at a checker's red/green edges alone makes a pixel-wise difference of ~18.
BLOCK = 4
# Measured (block means, 0-255): 1.6-3.8 for H.264, ProRes and AV1 of tone-mapped EXRs and of PNGs; an
# EXR's values shown with no view transform differ by ~34.
TOLERANCE = 6.0

_VARIANT = """
import sys, bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = {w}, {h}, 100
scene.view_settings.view_transform, scene.view_settings.look = "AgX", "AgX - Punchy"
scene.view_settings.exposure = 0.7
scene.render.fps = {fps}
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[2], relative_remap=False)
"""


def movie_scene(sample: Path, bpy_path: str = "") -> Path:
    """The sample scene at an odd size, with AgX, a look and an exposure (a view transform no movie gets
    right by accident), at 12 frames per second: `odd.blend` beside it, saved by the bpy given (default:
    this Python's)."""
    target = sample.with_name("odd.blend")
    script = _VARIANT.format(w=SIZE[0], h=SIZE[1], fps=FPS)
    env = {**os.environ, "PYTHONPATH": bpy_path} if bpy_path else None
    subprocess.run([sys.executable, "-c", script, str(sample), str(target)], check=True, capture_output=True,
                   timeout=300, env=env)
    return target


def frame_count(video: Path) -> int:
    return int(imageio_ffmpeg.count_frames_and_secs(str(video))[0])


def stream_info(video: Path) -> tuple[str, int, int, str]:
    """The video stream's codec, width, height and frame rate, as `ffmpeg -i` states them."""
    said = subprocess.run([FFMPEG, "-hide_banner", "-i", str(video)], capture_output=True, text=True).stderr
    line = next(line for line in said.splitlines() if "Video:" in line)
    codec = line.split("Video:", 1)[1].split()[0].strip(",")
    width, height = map(int, re.search(r", (\d+)x(\d+)", line).groups())  # type: ignore[union-attr]
    rate = re.search(r"([\d.]+) fps", line)
    return codec, width, height, rate.group(1) if rate else ""


def first_picture(video: Path) -> Image.Image:
    """The movie's first picture in RGB, at the movie's size."""
    _, width, height, _ = stream_info(video)
    raw = subprocess.run([FFMPEG, "-v", "error", "-i", str(video), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return Image.frombytes("RGB", (width, height), raw)


def exr_as_is(exr: Path) -> Image.Image:
    """An EXR's linear values clipped to 8 bits, with no view transform: what a movie that skipped
    tone mapping would show."""
    with Image.open(exr) if exr.suffix != ".exr" else _decoded(exr) as image:
        return image.convert("RGB")


def _decoded(exr: Path) -> Image.Image:
    import io

    png = subprocess.run([FFMPEG, "-v", "error", "-i", str(exr), "-frames:v", "1", "-f", "image2pipe", "-c:v", "png",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return Image.open(io.BytesIO(png))


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel (0-255) of BLOCKxBLOCK block means over b's area (a may be
    padded to even sizes); a border narrower than a block is left out."""
    width, height = (b.size[0] // BLOCK) * BLOCK, (b.size[1] // BLOCK) * BLOCK
    small = (width // BLOCK, height // BLOCK)
    pa = a.convert("RGB").crop((0, 0, width, height)).resize(small, Image.BOX).tobytes()
    pb = b.convert("RGB").crop((0, 0, width, height)).resize(small, Image.BOX).tobytes()
    return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)
