"""A movie of a job's frames (`braas-hpc video`, the panel's Video button): the frames are downloaded, and
with them the movie the cluster's finish step made when the job asked for one; otherwise the movie is
made here, with the ffmpeg the imageio-ffmpeg package ships (and, for EXR frames, this computer's
Blender, which applies the scene's view transform). The same script makes it in both places:
cluster_scripts/make_video.py."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from . import transfer
from .context import JobContext
from .errors import BraasError, UsageError
from .jobs import VIDEO_CODECS, JobSpec
from .local_blender import local_blender
from .scripts import RENDER_TASK
from .transport.base import Progress

MAKE_VIDEO = RENDER_TASK.parent / "make_video.py"
DEFAULT_FPS = 24.0  # jobs of releases that did not record the scene's rate
BLENDER_TIMEOUT_S = 3600


@dataclass
class VideoResult:
    job: str
    video: Path
    codec: str
    fps: float
    made_on: str  # "cluster" (the finish step's, downloaded) or "here"
    frames_downloaded: int = 0
    encoder: str = ""
    seconds: float = 0.0
    gaps: list[int] = field(default_factory=list)  # missing frames shown as the one before (--allow-gaps)

    def to_json(self) -> dict[str, object]:
        return {"job": self.job, "video": str(self.video), "codec": self.codec, "fps": self.fps,
                "made_on": self.made_on, "frames_downloaded": self.frames_downloaded, "encoder": self.encoder,
                "seconds": self.seconds, "gaps": self.gaps}


def make_video_module() -> ModuleType:
    """cluster_scripts/make_video.py, loaded from its file (it is shipped beside the package, not in it)."""
    found = importlib.util.spec_from_file_location("braas_make_video", MAKE_VIDEO)
    if found is None or found.loader is None:
        raise BraasError(f"the movie script is missing from this installation: {MAKE_VIDEO}")
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def bundled_ffmpeg() -> str:
    """The ffmpeg of the imageio-ffmpeg package (a pinned build with libx264, prores_ks and libaom-av1)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UsageError("no ffmpeg for movies on this computer: install braas-hpc's dependencies again "
                         "(pip install imageio-ffmpeg==0.6.0)") from None
    # Blender unpacks an extension's wheels without the execute bit: give it back to our own copy (imageio-ffmpeg
    # would otherwise pass over its binary, and remembers what it found).
    for binary in (Path(imageio_ffmpeg.__file__).parent / "binaries").glob("ffmpeg-*"):
        info = binary.lstat()  # a link is left alone: only a file of our own is changed
        if os.name == "posix" and stat.S_ISREG(info.st_mode) and not info.st_mode & stat.S_IXUSR \
                and info.st_uid == os.getuid():
            binary.chmod(info.st_mode | stat.S_IXUSR)
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:  # no binary for this platform in the wheel
        raise UsageError(f"imageio-ffmpeg has no ffmpeg for this computer: {exc}") from None


def check_request(codec: str, fps: float | None) -> None:
    """`fps` None: the scene's."""
    if codec not in VIDEO_CODECS:
        raise UsageError(f"video codec {codec!r} is not one of {', '.join(VIDEO_CODECS)}")
    if fps is not None and not 0 < fps <= 1000:
        raise UsageError(f"frame rate must be between 1 and 1000 frames per second, got {fps}")


def _view_arguments(spec: JobSpec) -> list[str]:
    return ["--view-transform", spec.view_transform, "--look", spec.look, "--exposure", f"{spec.exposure:g}",
            "--gamma", f"{spec.gamma:g}", "--display", spec.display_device]


def _in_blender(spec: JobSpec, argv: list[str]) -> dict[str, object]:
    """EXR frames: the script runs inside this computer's Blender, which tone-maps them."""
    module = make_video_module()
    command = [*local_blender(), "-b", "--factory-startup", "-P", str(MAKE_VIDEO), "--", *argv, *_view_arguments(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BLENDER_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BraasError(f"Blender could not convert the EXR frames ({' '.join(command[:1])}): {exc}") from None
    reports = [line for line in done.stdout.splitlines() if line.startswith(module.REPORT_PREFIX)]
    if done.returncode == 0 and reports:
        return dict(json.loads(reports[-1].removeprefix(module.REPORT_PREFIX)))
    said = [line for line in done.stderr.splitlines() if "no movie:" in line]
    tail = said[-1].split("no movie:", 1)[1].strip() if said else (done.stderr or done.stdout).strip()[-800:]
    raise BraasError(f"no movie: {tail}")


def encode_here(spec: JobSpec, frames_dir: Path, codec: str, fps: float, allow_gaps: bool) -> dict[str, object]:
    """The movie of the frames in `frames_dir`, made on this computer (blocking: run it in a thread)."""
    module = make_video_module()
    out = frames_dir / module.video_file_name(codec, fps)
    ffmpeg = bundled_ffmpeg()
    if spec.extension != "exr":
        try:
            return dict(module.make_video(str(frames_dir), list(spec.frames), spec.extension, codec, fps, [ffmpeg],
                                          str(out), allow_gaps))
        except module.VideoError as exc:
            raise BraasError(f"no movie: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="braas-video-") as temp:
        frames_file = Path(temp) / "frames.txt"
        frames_file.write_text(",".join(str(f) for f in spec.frames) + "\n", encoding="utf-8")
        argv = ["--frames-dir", str(frames_dir), "--frames-file", str(frames_file), "--extension", "exr",
                "--codec", codec, "--fps", f"{fps:g}", "--ffmpeg", ffmpeg, "--out", str(out),
                *(["--allow-gaps"] if allow_gaps else [])]
        return _in_blender(spec, argv)


async def make_video(job: JobContext, dest: Path, codec: str = "h264", fps: float | None = None,
                     allow_gaps: bool = False, progress: Progress | None = None) -> VideoResult:
    """Download the job's frames (and the cluster's movie, when it made this one), else make it here.
    `fps` None: the scene's."""
    check_request(codec, fps)
    spec = job.record.spec
    fps = fps or spec.fps or DEFAULT_FPS
    got = await transfer.download(job, dest, progress)
    name = make_video_module().video_file_name(codec, fps)
    if spec.video == codec and (spec.fps or DEFAULT_FPS) == fps and (dest / name).is_file():
        # the finish step's, checked against its SHA-256 by the download
        return VideoResult(job.name, dest / name, codec, fps, "cluster", got.downloaded)
    return await _made_here(job.name, spec, dest, codec, fps, allow_gaps, got.downloaded)


async def make_group_video(name: str, jobs: Sequence[JobContext], frames: Sequence[int], dest: Path,
                           codec: str = "h264", fps: float | None = None, allow_gaps: bool = False,
                           progress: Progress | None = None) -> VideoResult:
    """The movie of one animation rendered over several clusters (core.group): every member's frames
    into `dest`, then made here; `frames`: the whole film's."""
    check_request(codec, fps)
    spec = dataclasses.replace(jobs[0].record.spec, frames=tuple(sorted(frames)))
    fps = fps or spec.fps or DEFAULT_FPS
    downloaded = 0
    for job in jobs:
        downloaded += (await transfer.download(job, dest, progress)).downloaded
    return await _made_here(name, spec, dest, codec, fps, allow_gaps, downloaded)


async def _made_here(job: str, spec: JobSpec, dest: Path, codec: str, fps: float, allow_gaps: bool,
                     downloaded: int) -> VideoResult:
    started = time.monotonic()
    made = await asyncio.to_thread(encode_here, spec, dest, codec, fps, allow_gaps)
    result = VideoResult(job, dest / make_video_module().video_file_name(codec, fps), codec, fps, "here",
                         downloaded, str(made.get("encoder", "")), round(time.monotonic() - started, 3))
    result.gaps = [int(f) for f in made.get("gaps", [])]  # type: ignore[union-attr]
    return result
