"""What tests measure of a movie, with the ffmpeg imageio-ffmpeg ships (there is no ffprobe here): the
frame count by decoding every frame (imageio_ffmpeg.count_frames_and_secs), the size and codec from
`ffmpeg -i`, the first picture as RGB bytes, and the mean difference of two pictures."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
from PIL import Image

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


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
    """Mean absolute difference per channel (0-255) over b's area (a may be padded to even sizes)."""
    a = a.convert("RGB").crop((0, 0, *b.size))
    b = b.convert("RGB")
    pa, pb = a.tobytes(), b.tobytes()
    return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)
