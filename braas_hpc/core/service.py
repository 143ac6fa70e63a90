"""The service layer: what the CLI verbs and the add-on's operators call. Async, bpy-free.

Submission: validate -> pack -> upload -> write the array script -> submit -> register.
The `local` preset runs the same job script here, task by task, with no SSH and no scheduler.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import VERSION, registry
from .errors import BraasError, UsageError
from .frames import chunk_frames, format_frames, parse_frames
from .jobs import JobPaths, JobSpec, frame_file_name, frames_file_text, make_job_name
from .local_blender import local_blender
from .packing import pack_scene
from .paths import data_dir
from .presets import Preset, load_preset
from .schedulers import render_job_script, scheduler_for
from .schedulers.base import COMPLETED, FAILED, PENDING, RUNNING
from .transport import Transport, transport_for

RENDER_TASK = Path(__file__).resolve().parents[2] / "cluster_scripts" / "render_task.py"
ProgressCallback = Callable[[int, int, str], None]  # (frames done, frames total, message)


@dataclass(frozen=True)
class SubmitRequest:
    """What a user asks for, as typed by the CLI or the panel; validated by `build_spec`."""

    scene: Path
    preset: str
    frames: str
    chunk: int = 1
    device: str = "CPU"
    walltime_min: int | None = None
    max_parallel: int = 0
    ssh_backend: str | None = None  # None: the preset's


@dataclass(frozen=True)
class SubmitResult:
    job: str
    preset: str
    frames: str
    tasks: int
    scheduler_ids: tuple[str, ...]
    job_dir: str

    def to_json(self) -> dict[str, object]:
        return {"job": self.job, "preset": self.preset, "frames": self.frames, "tasks": self.tasks,
                "scheduler_ids": list(self.scheduler_ids), "job_dir": self.job_dir}


def build_spec(request: SubmitRequest) -> tuple[JobSpec, Preset]:
    """Check everything that can be checked before any work: nothing is written when this fails."""
    scene = request.scene.expanduser().resolve()
    if not scene.is_file():
        raise UsageError(f"scene file not found: {request.scene}")
    if scene.suffix.lower() != ".blend":
        raise UsageError(f"not a .blend file: {request.scene}")
    preset = load_preset(request.preset)
    frames = parse_frames(request.frames)
    walltime = request.walltime_min or preset.default_walltime_min
    if walltime > preset.max_walltime_min:
        raise UsageError(f"walltime {walltime} min is above the limit of preset {preset.name} "
                         f"({preset.max_walltime_min} min)")
    if request.chunk < 1:
        raise UsageError(f"chunk size must be at least 1, got {request.chunk}")
    tasks = tuple(tuple(task) for task in chunk_frames(frames, request.chunk))
    spec = JobSpec(name=make_job_name(scene), preset=preset.name, scene=str(scene), frames=tuple(frames),
                   chunk=request.chunk, device=request.device, walltime_min=walltime,
                   max_parallel=request.max_parallel, tasks=tasks)
    spec.validate()
    return spec, preset


def remote_root(preset: Preset) -> str:
    base = preset.workdir or str(data_dir() / "local")
    return f"{base.rstrip('/')}/braas-hpc"


def _job_json(spec: JobSpec) -> str:
    return json.dumps({"spec": spec.to_dict(), "braas_hpc": VERSION, "submitted": time.time()}, indent=1)


def _write_inputs(staging: Path, spec: JobSpec, preset: Preset, paths: JobPaths, blender: list[str]) -> None:
    """Write the job's small files locally; they are uploaded beside the packed scene."""
    header = [] if preset.is_local else scheduler_for(preset.scheduler).directives(spec, preset, paths)
    script = render_job_script(header, spec, preset, paths, blender, paths.render_task(VERSION))
    (staging / "job.sh").write_text(script)
    (staging / "frames.txt").write_text(frames_file_text(spec.tasks))
    (staging / "job.json").write_text(_job_json(spec))


async def _upload(transport: Transport, staging: Path, paths: JobPaths) -> None:
    await transport.run(["mkdir", "-p", paths.in_dir, paths.out_dir, paths.log_dir, paths.status_dir])
    installed = {entry.name for entry in await transport.listdir(paths.scripts_dir(VERSION))}
    if "render_task.py" not in installed:
        await transport.put(RENDER_TASK, paths.render_task(VERSION))
    for name, target in (("scene.blend", paths.scene), ("frames.txt", paths.frames_file),
                         ("job.json", paths.job_json), ("job.sh", paths.script)):
        await transport.put(staging / name, target)


async def prepare_job(spec: JobSpec, preset: Preset, transport: Transport) -> JobPaths:
    """Pack, write and upload everything the job needs; return its paths."""
    paths = JobPaths(remote_root(preset), spec.name)
    blender = local_blender() if preset.is_local else [preset.blender]
    with tempfile.TemporaryDirectory(prefix="braas-hpc-") as temp:
        staging = Path(temp)
        await asyncio.to_thread(pack_scene, Path(spec.scene), staging / "scene.blend")
        _write_inputs(staging, spec, preset, paths, blender)
        await _upload(transport, staging, paths)
    return paths


async def submit(request: SubmitRequest) -> SubmitResult:
    spec, preset = build_spec(request)
    if preset.is_local:
        raise UsageError("the local preset renders at once: use `braas-hpc render` instead of submit")
    scheduler = scheduler_for(preset.scheduler)
    transport = transport_for(preset, request.ssh_backend)
    paths = await prepare_job(spec, preset, transport)
    done = await transport.run(scheduler.submit_argv(paths.script))
    job_id = scheduler.parse_submit(done.stdout)
    registry.add_job(spec, paths.root, [job_id], PENDING)
    return SubmitResult(spec.name, preset.name, format_frames(spec.frames), len(spec.tasks), (job_id,),
                        paths.job_dir)


async def render_local(spec: JobSpec, preset: Preset, progress: ProgressCallback | None = None) -> SubmitResult:
    """Render on this computer through the same job script and render task as a cluster.

    Takes a spec from `build_spec`, so bad input is refused before anything is shown or written.
    """
    if not preset.is_local:
        raise UsageError(f"preset {preset.name} is a cluster: use `braas-hpc submit` for it")
    transport = transport_for(preset)
    paths = await prepare_job(spec, preset, transport)
    registry.add_job(spec, paths.root, [], RUNNING)
    total = len(spec.frames)
    done = 0
    for task in range(1, len(spec.tasks) + 1):
        done = await _run_local_task(paths, task, done, total, progress)
    state = COMPLETED if not missing_frames(spec, _frame_names(Path(paths.out_dir))) else FAILED
    registry.set_state(spec.name, state)
    if state != COMPLETED:
        raise BraasError(f"job {spec.name} finished with frames missing; logs are in {paths.log_dir}")
    return SubmitResult(spec.name, preset.name, format_frames(spec.frames), len(spec.tasks), (), paths.job_dir)


async def _run_local_task(paths: JobPaths, task: int, done: int, total: int,
                          progress: ProgressCallback | None) -> int:
    log_path = Path(paths.log_dir) / f"task-{task}.log"
    env = {**os.environ, "BRAAS_TASK_ID": str(task)}
    process = await asyncio.create_subprocess_exec(
        "bash", paths.script, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    with log_path.open("wb") as log:
        async for line in process.stdout:
            log.write(line)
            text = line.decode(errors="replace")
            if text.startswith("BRAAS-PROGRESS ") and progress:
                fields = dict(part.split("=", 1) for part in text.split()[1:] if "=" in part)
                done += 1
                progress(done, total, f"frame {fields.get('frame')} {fields.get('status')}")
    await process.wait()
    return done


def _frame_names(out_dir: Path) -> set[str]:
    return {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()


def missing_frames(spec: JobSpec, present: set[str]) -> list[int]:
    """Frames of the job whose files are not among `present` (file names in out/)."""
    return [f for f in spec.frames if frame_file_name(f, spec.extension) not in present]
