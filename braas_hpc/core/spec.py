"""From what a user asks (CLI flags or panel fields) to a validated JobSpec, in one place.

Everything that can be checked before any work is checked here, against the preset's limits, so a
bad request fails with a message naming the value and the limit, and nothing is written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .frames import chunk_frames, parse_frames
from .jobs import PACK_MODES, VIDEO_CODECS, JobSpec, check_directive_values, make_job_name
from .presets import CYCLES_DEVICES, Partition, Preset, load_preset
from .scene_settings import (
    CYCLES_DEFAULT_SAMPLES,
    SceneSettings,
    check_renderable,
    job_format,
    read_scene_settings,
)
from .split import check_split, part_offsets, part_samples
from .user_presets import how_to_set

# What a dry run shows where the user's own value is still missing; never sent (a real submission refuses).
ACCOUNT_PLACEHOLDER = "<ACCOUNT>"
BLENDER_PLACEHOLDER = "<YOUR-BLENDER>"


@dataclass(frozen=True)
class SubmitRequest:
    """What a user asks for, as typed by the CLI or the panel."""

    scene: Path
    preset: str
    frames: str = ""  # "": the scene's frame range and step
    chunk: int = 1
    device: str = "CPU"
    walltime_min: int | None = None
    max_parallel: int = 0
    ssh_backend: str | None = None  # None: the preset's
    account: str = ""  # "": the preset's
    partition: str = ""  # "": the preset's default for the device
    email: str = ""
    memory_gb: int = 0
    allow_scripts: bool = False  # the user's explicit opt-in, for this job only
    pack: str = "packed"  # "packed" (one .blend) or "dir" (the .blend and its dependency tree)
    project: str = ""  # names the job; "": the scene's file name
    retries: int = 2  # automatic resubmissions of lost frames (core.recovery)
    gpu_backend: str = ""  # GPU jobs: CUDA, OPTIX, HIP, ONEAPI or METAL, "+CPU" to add the cores; "": the partition's
    image_format: str = ""  # "": the scene's file format and colour settings, untouched
    resolution_percentage: int = 0  # 0: the scene's
    samples: int = 0  # 0: the scene's
    video: str = ""  # a movie made on the cluster in the finish step (h264, prores, av1); "": none
    fps: float = 0.0  # the movie's frame rate; 0: the scene's
    split_samples: int = 0  # >= 2: one still rendered as this many parts, merged on the cluster (core.split)
    group: str = ""  # a member job of one animation over several clusters (core.group): the group's name
    # The render settings as the add-on sees them in the open scene (saved before the job is sent);
    # None: read from the file.
    scene_settings: SceneSettings | None = None


def _scene(path: Path) -> Path:
    scene = path.expanduser().resolve()
    if not scene.is_file():
        raise UsageError(f"scene file not found: {path}")
    if scene.suffix.lower() != ".blend":
        raise UsageError(f"not a .blend file: {path}")
    return scene


def _from_scene(request: SubmitRequest, scene: Path) -> tuple[SceneSettings, str, list[int]]:
    """What the scene decides unless the user did: its format and frames; refused when no job can render it."""
    settings = request.scene_settings or read_scene_settings(scene)
    check_renderable(settings, scene.name)
    image_format = job_format(settings, request.image_format, scene.name)
    frames = parse_frames(request.frames if request.frames.strip() else settings.frames)
    return settings, image_format, frames


def _partition_list(preset: Preset, kind: str = "") -> str:
    """The preset's partitions (of one kind when given), as a user would type them, with kind and QoS."""
    shown = [f"{n} ({p.kind}{', QoS ' + p.qos if p.qos else ''})" for n, p in preset.partitions.items()
             if not kind or p.kind == kind]
    return ", ".join(shown) or "none"


def _partition(request: SubmitRequest, preset: Preset) -> tuple[str, Partition]:
    gpu = request.device == "GPU"
    name = request.partition or preset.default_partition(gpu)
    if preset.is_local:
        return "", Partition(kind="gpu" if gpu else "cpu", cycles_device="CUDA" if gpu else "CPU")
    if not name:
        kind = "gpu" if gpu else "cpu"
        if not any(p.kind == kind for p in preset.partitions.values()):
            other = "add --gpu" if not gpu else "leave --gpu out"
            raise UsageError(f"preset {preset.name} has no {kind.upper()} partition ({other}); its partitions: "
                             f"{_partition_list(preset)}")
        raise UsageError(f"preset {preset.name} has no default {kind.upper()} partition; choose one with "
                         f"--partition: {_partition_list(preset, kind)}")
    if preset.partitions and name not in preset.partitions:
        # MareNostrum 5's entries are QoS names: the same list answers a QoS typed as a partition.
        what = "partition or QoS" if any(p.qos for p in preset.partitions.values()) else "partition"
        shown = repr(name) if len(name) <= 64 else f"{name[:60]!r}..."  # a pasted paragraph is not echoed whole
        raise UsageError(f"preset {preset.name} has no {what} {shown}; choose one of: {_partition_list(preset)}")
    part = preset.partition(name)
    if gpu and part.kind != "gpu":
        raise UsageError(f"partition {name} of preset {preset.name} has no GPUs; GPU partitions: "
                         f"{_partition_list(preset, 'gpu')}")
    return name, part


def _gpu_backend(request: SubmitRequest, part: Partition) -> str:
    """The Cycles GPU backend: the user's choice, or the one the partition's hardware has."""
    chosen = request.gpu_backend.strip().upper()
    if request.device != "GPU":
        if chosen:
            raise UsageError("a GPU backend was given for a CPU job: add --gpu, or leave the backend out")
        return "CPU"
    if not chosen:
        return part.cycles_device
    if chosen.removesuffix("+CPU") not in CYCLES_DEVICES[1:]:
        raise UsageError(f"GPU backend {request.gpu_backend!r} is not one of {', '.join(CYCLES_DEVICES[1:])} "
                         "(optionally with +CPU)")
    return chosen


def _check_site(request: SubmitRequest, preset: Preset, part: Partition, account: str, dry_run: bool) -> None:
    if preset.account_required and not account and not dry_run:
        raise UsageError(f"preset {preset.name} needs an account (project) for every job: give --account, "
                         f"or once for all: {how_to_set(preset, 'account', 'PROJECT')}")
    if (part.arch or preset.arch) == "aarch64" and not preset.blender and not dry_run:
        raise UsageError(f"preset {preset.name} runs on aarch64 nodes and needs the path of your own Blender "
                         f"build ({how_to_set(preset, 'blender', 'PATH')}): {preset.blender_note}")
    if request.email and not preset.mail_allowed:
        raise UsageError(f"preset {preset.name} does not send job e-mail; leave the e-mail empty")
    if request.memory_gb and not preset.memory_allowed:
        raise UsageError(f"preset {preset.name} rejects memory requests (the node's memory comes with it); "
                         "leave memory at 0")


def _check_tasks(preset: Preset, part: Partition, frames: int, tasks: int, chunk: int) -> None:
    array_limit = preset.max_array_size if preset.arrays else 0
    for limit, what in ((array_limit, "array size"), (part.max_jobs_per_user or preset.max_jobs_per_user,
                                                      "jobs per user")):
        if limit and tasks > limit:
            need = math.ceil(frames / limit)
            raise UsageError(f"{tasks} array tasks exceed the {what} limit of {preset.name} ({limit}; each "
                             f"array task counts): use --chunk {need} or more (now {chunk})")


def _video_fields(request: SubmitRequest, settings: SceneSettings, preset: Preset) -> dict[str, object]:
    """The scene's frame rate and colour management (every job records them, for a movie made later), and
    the movie the finish step makes, which needs an ffmpeg the preset names."""
    video = request.video.strip().lower()
    if video and video not in VIDEO_CODECS:
        raise UsageError(f"video codec {request.video!r} is not one of {', '.join(VIDEO_CODECS)}")
    if video and not preset.ffmpeg:
        raise UsageError(f"preset {preset.name} names no ffmpeg, so its finish step cannot make a movie: leave "
                         "the video out and make it on this computer after the download (braas-hpc video JOB), or "
                         "set ffmpeg in your preset (see the presets documentation)")
    if request.fps and not 0 < request.fps <= 1000:
        raise UsageError(f"frame rate must be between 1 and 1000 frames per second, got {request.fps}")
    return {"fps": request.fps or settings.fps, "view_transform": settings.view_transform, "look": settings.look,
            "exposure": settings.exposure, "gamma": settings.gamma, "display_device": settings.display_device,
            "video": video}


def build_spec(request: SubmitRequest, dry_run: bool = False) -> tuple[JobSpec, Preset]:
    """The validated job and its preset. `dry_run`: an account or Blender the preset needs and nobody gave
    is shown as a placeholder (ACCOUNT_PLACEHOLDER, BLENDER_PLACEHOLDER) instead of refused."""
    scene = _scene(request.scene)
    if request.pack not in PACK_MODES:
        raise UsageError(f"pack mode {request.pack!r} is not one of {', '.join(PACK_MODES)}")
    # The user's own values first, so a hostile one is named as such before it reaches any other message.
    check_directive_values(account=request.account, partition=request.partition, email=request.email)
    preset = load_preset(request.preset)
    settings, image_format, frames = _from_scene(request, scene)
    if request.chunk < 1:
        raise UsageError(f"chunk size must be at least 1, got {request.chunk}")
    if not 0 <= request.retries <= 10:
        raise UsageError(f"retries must be between 0 and 10, got {request.retries}")
    partition, part = _partition(request, preset)
    walltime = request.walltime_min or part.default_walltime_min or preset.default_walltime_min
    limit = part.max_walltime_min if preset.partitions else preset.max_walltime_min
    if walltime > limit:
        raise UsageError(f"walltime {walltime} min is above the limit of {partition or preset.name} ({limit} min)")
    account = request.account or preset.account
    _check_site(request, preset, part, account, dry_run)
    split_frame, part_samples, offsets = _split(request, settings, frames, scene.name)
    if part_samples:  # the parts are the job's units: one task each
        frames = list(range(1, len(part_samples) + 1))
        request = dataclasses.replace(request, chunk=1)
    tasks = tuple(tuple(task) for task in chunk_frames(frames, request.chunk))
    _check_tasks(preset, part, len(frames), len(tasks), request.chunk)
    gpu = request.device == "GPU"
    spec = JobSpec(
        name=make_job_name(scene, request.project), preset=preset.name, scene=str(scene), frames=tuple(frames),
        chunk=request.chunk, device=request.device, walltime_min=walltime, max_parallel=request.max_parallel,
        tasks=tasks, account=account, partition=partition, qos=part.qos, email=request.email,
        memory_gb=request.memory_gb, cycles_device=_gpu_backend(request, part),
        gpus=(part.gpus_per_task or 1) if gpu else 0, cpus=part.cpus_per_task, whole_node=part.whole_node,
        pack=request.pack, allow_scripts=request.allow_scripts, retries=request.retries,
        image_format=image_format, scene_name=settings.scene, resolution_percentage=request.resolution_percentage,
        samples=request.samples, split_frame=split_frame, part_samples=part_samples, part_offsets=offsets,
        group=request.group, **_video_fields(request, settings, preset),
    )
    spec.validate()
    if dry_run:
        return _with_placeholders(spec, preset, part)
    return spec, preset


def _split(request: SubmitRequest, settings: SceneSettings, frames: list[int], source: str
           ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """A split still's frame, samples per part and each part's first sample; nothing for an ordinary job."""
    if not request.split_samples:
        return 0, (), ()
    if request.video:
        raise UsageError("--video makes a movie of an animation's frames; a split still is one frame: "
                         "submit it without --video")
    samples = request.samples or settings.samples or CYCLES_DEFAULT_SAMPLES
    check_split(request.split_samples, frames, samples, source)
    shares = part_samples(samples, request.split_samples)
    return frames[0], shares, part_offsets(shares)


def _with_placeholders(spec: JobSpec, preset: Preset, part: Partition) -> tuple[JobSpec, Preset]:
    """After validation (a placeholder is no valid value): what a real submission would refuse as missing."""
    if preset.account_required and not spec.account:
        spec = dataclasses.replace(spec, account=ACCOUNT_PLACEHOLDER)
    if (part.arch or preset.arch) == "aarch64" and not preset.blender:
        preset = dataclasses.replace(preset, blender=BLENDER_PLACEHOLDER)
    return spec, preset
