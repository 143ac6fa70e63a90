"""Runs inside Blender on a compute node: renders the frames of one array task.

Usage: blender -b -Y in/scene.blend -E CYCLES -t N -P render_task.py --
           --job-dir DIR --task K [--device CPU|GPU] [--format PNG] [--scene=NAME]
           [--resolution-percentage P] [--samples S]

Line K of DIR/frames.txt lists the task's frames. Each frame is rendered to a hidden temp file in
DIR/out and renamed to frame_NNNNNN.<ext> when complete, so a frame file is never half-written.
The scene's own output settings (colour depth, codec, view transform), resolution and samples are
kept; --format changes the file format only when the scene has another one.
Frames that already exist are skipped. DIR/status/task-K.json records frames done, timings, node and
exit code. One progress line per frame: `BRAAS-PROGRESS task=K frame=F done=I total=N seconds=S status=X`;
within a frame, Cycles' sample count every few seconds: `BRAAS-SAMPLES task=K frame=F Sample S/M`. After
each frame, a small JPEG of it replaces the task's previous one in DIR/status/previews/ (the live preview).
Exit 0 when every frame of the task exists afterwards, 1 when some failed, 2 on bad arguments,
4 when the requested device is not there.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Mapping

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # devices.py is installed beside this file
import devices  # noqa: E402
import preview  # noqa: E402
import split_part  # noqa: E402
import watchdog  # noqa: E402
from devices import Device, DeviceError, DevicePlan  # noqa: E402
from jsonfile import write_json_atomic  # noqa: E402

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "OPEN_EXR": "exr", "OPEN_EXR_MULTILAYER": "exr", "TIFF": "tif"}


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="render_task.py")
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--device", choices=("CPU", "GPU"), default="CPU")
    parser.add_argument("--format", choices=sorted(EXTENSIONS), default="PNG")
    # A resubmission of missing frames is a new round with its own frames file and markers.
    parser.add_argument("--frames-file", default="frames.txt")
    parser.add_argument("--marker-prefix", default="")
    parser.add_argument("--cycles-device", default="",
                        help="CUDA, OPTIX, HIP, ONEAPI, METAL, optionally +CPU: the GPU backend to use")
    parser.add_argument("--scene", default="", help="the scene to render (default: the one the file opens with)")
    parser.add_argument("--resolution-percentage", type=int, default=0, help="0: the scene's")
    parser.add_argument("--samples", type=int, default=0, help="0: the scene's")
    # A split still (split_part.py): the frames file lists parts of this one frame.
    parser.add_argument("--split-frame", type=int, default=None)
    parser.add_argument("--part-samples", default="")
    parser.add_argument("--part-offsets", default="")
    # A member of one animation over several clusters: another cluster may take a chunk not started here.
    parser.add_argument("--claims", action="store_true")
    return parser.parse_args(argv)


CLAIM_WAIT_S = 10.0  # a claim directory with no owner file yet: its maker is between two steps (milliseconds)


def claim_chunk(job_dir: str, frames: list[int], task: int) -> bool:
    """Whether this task may render its chunk: it claims it first (mkdir is atomic on a shared file
    system). The client takes a chunk for another cluster the same way and leaves `moved` in the claim;
    a task claims with `task`. A claim that is already there is this chunk's own from an earlier start of
    the task (a requeue) unless it says `moved`. The directory is named by the chunk's first frame
    (JobPaths.claims_dir)."""
    claim = os.path.join(job_dir, "claims", str(frames[0]))
    os.makedirs(os.path.dirname(claim), exist_ok=True)
    try:
        os.mkdir(claim)
    except FileExistsError:
        deadline = time.monotonic() + CLAIM_WAIT_S
        while time.monotonic() < deadline:
            if os.path.exists(os.path.join(claim, "moved")):
                return False
            if os.path.exists(os.path.join(claim, "task")):
                return True
            time.sleep(0.2)
        return not os.path.exists(os.path.join(claim, "moved"))
    with open(os.path.join(claim, "task"), "w", encoding="utf-8") as stream:
        stream.write(f"{task} {socket.gethostname()}\n")
    return True


def task_frames(job_dir: str, frames_file: str, task: int) -> list[int]:
    if os.path.basename(frames_file) != frames_file:
        raise ValueError(f"frames file {frames_file!r} must be a name inside the job directory")
    with open(os.path.join(job_dir, frames_file), encoding="utf-8") as stream:
        lines = stream.read().splitlines()
    if not 1 <= task <= len(lines):
        raise ValueError(f"task {task} is not in {frames_file} ({len(lines)} tasks)")
    return [int(f) for f in lines[task - 1].split(",") if f.strip()]


def cycles_devices(prefs: object) -> list[Device]:
    refresh = getattr(prefs, "refresh_devices", None) or prefs.get_devices  # type: ignore[attr-defined]
    refresh()
    return [Device(d.type, d.id, d.name) for d in prefs.devices]  # type: ignore[attr-defined]


def use_device(scene: bpy.types.Scene, device: str, backend_wanted: str = "") -> DevicePlan:
    """Select the Cycles device; for a GPU exactly the scheduler's GPUs, or fail loudly (no silent CPU)."""
    if device == "CPU":
        scene.cycles.device = "CPU"
        return devices.plan_devices("CPU", [], os.environ)
    prefs = bpy.context.preferences.addons["cycles"].preferences
    errors = []
    for request in (backend_wanted,) if backend_wanted else devices.GPU_BACKENDS:
        backend, _ = devices.parse_request(request)
        try:
            prefs.compute_device_type = backend
        except (TypeError, ValueError):
            errors.append(f"the job asked for a GPU ({backend}) but Blender found none: this build has no {backend}")
            continue
        try:
            plan = devices.plan_devices(request, cycles_devices(prefs), os.environ)
        except DeviceError as exc:
            errors.append(str(exc))
            continue
        for d in prefs.devices:
            d.use = d.id in plan.enable
        scene.cycles.device = plan.scene_device
        return plan
    raise DeviceError("; ".join(errors))


def render_frame(scene: bpy.types.Scene, frame: int, temp: str, final: str) -> None:
    """Blender writes the frame as its own render output does (every view layer and pass in a multilayer
    EXR, which Image.save_render does not promise), to a temp name without '#' or frame suffix."""
    scene.frame_set(frame)
    if os.path.lexists(temp):  # Blender opens its fixed name as it finds it: never through a leftover link
        os.unlink(temp)
    scene.render.filepath = temp
    bpy.ops.render.render(write_still=True, scene=scene.name)
    if not os.path.isfile(temp):
        raise RuntimeError(f"Blender wrote no {os.path.basename(temp)}")
    os.replace(temp, final)


def pick_scene(name: str) -> bpy.types.Scene:
    """The scene the job was built from (read from the file by braas-hpc), made the window's scene."""
    scene = bpy.data.scenes.get(name) if name else bpy.context.scene
    if scene is None:
        raise ValueError(f"the file has no scene {name!r}")
    window = bpy.context.window
    if window is not None and window.scene != scene:
        window.scene = scene
    return scene


def apply_output(scene: bpy.types.Scene, file_format: str, percentage: int, samples: int) -> None:
    """The job's file format, and the user's overrides; the scene's other image settings are left alone."""
    render = scene.render
    settings = render.image_settings
    if settings.file_format != file_format:
        if hasattr(settings, "media_type"):  # Blender 5.0+ lists file formats per media type
            settings.media_type = "MULTI_LAYER_IMAGE" if file_format == "OPEN_EXR_MULTILAYER" else "IMAGE"
        settings.file_format = file_format
    # The frame file's name is ours: Blender adds the extension it writes (.exr for both EXR kinds).
    render.use_file_extension = True
    # An EXR "Preview" is a second file (a JPEG) under a name Blender derives: it would be left behind
    # as a temp file. The task writes its own small previews (status/previews), the finish step thumb.jpg.
    if getattr(settings, "use_preview", False):
        settings.use_preview = False
    if percentage:
        render.resolution_percentage = percentage
    if samples:
        scene.cycles.samples = samples


def task_began(env: Mapping[str, str]) -> float | None:
    """When the job script started (BRAAS_TASK_BEGAN), before module loads and Blender's own start."""
    value = env.get("BRAAS_TASK_BEGAN", "")
    return float(value) if value.isdigit() else None


def node_name(env: Mapping[str, str]) -> str:
    """The scheduler's name for this node, which `--exclude` understands: Slurm's node name can differ
    from the host name (an FQDN, an alias, several nodes on one host)."""
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def show(status_dir: str, final: str, frame: int, scene: bpy.types.Scene, before: str) -> str:
    """The live preview of the frame just rendered; none (said in the log) never costs the frame."""
    try:
        return preview.write_preview(status_dir, final, frame, scene, before)
    except Exception as exc:  # noqa: BLE001 - the frame is on disk, which is what counts
        print(f"braas-hpc: no preview of frame {frame}: {type(exc).__name__}: {exc}", flush=True)
        return before


def main() -> int:
    args = parse_args()
    out_dir = os.path.join(args.job_dir, "out")
    status_dir = os.path.join(args.job_dir, "status")
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(status_dir, exist_ok=True)
    marker_path = os.path.join(status_dir, f"{args.marker_prefix}task-{args.task}.json")
    frames = task_frames(args.job_dir, args.frames_file, args.task)
    marker: dict[str, object] = {
        "task": args.task, "frames": frames, "rendered": [], "skipped": [], "failed": [], "timings": {},
        "node": node_name(os.environ), "host": socket.gethostname(), "started": time.time(), "finished": None,
        "exit_code": None, "state": "running", "blender": bpy.app.version_string, "began": task_began(os.environ),
    }
    if args.claims and frames and not claim_chunk(args.job_dir, frames, args.task):
        print(f"braas-hpc: frames {frames} moved to another cluster of the group; nothing to render here", flush=True)
        marker.update(state="moved", exit_code=0, finished=time.time())
        write_json_atomic(marker_path, marker)
        return 0
    write_json_atomic(marker_path, marker)
    try:
        scene = pick_scene(args.scene)
        apply_output(scene, args.format, args.resolution_percentage, args.samples)
        parts = None
        if args.split_frame is not None:
            parts = split_part.Parts.from_args(args.split_frame, args.part_samples, args.part_offsets)
            for part in frames:
                parts.check(part)
            split_part.prepare(scene, out_dir, parts.frame)
    except (ValueError, TypeError, AttributeError) as exc:
        print(f"braas-hpc: {exc}", file=sys.stderr, flush=True)
        marker.update(state="failed", exit_code=2, error=str(exc), finished=time.time())
        write_json_atomic(marker_path, marker)
        return 2
    render = scene.render
    # What the frames are, in the task's own record: the scene's settings with the user's overrides applied.
    marker.update(scene=scene.name, file_format=render.image_settings.file_format, samples=scene.cycles.samples,
                  resolution=[render.resolution_x, render.resolution_y, render.resolution_percentage])
    render.use_overwrite = False
    render.use_placeholder = False
    threads, threads_from = devices.threads_from_env(os.environ)
    if threads:  # the allocation's cores, not every core of a shared node
        scene.render.threads_mode = "FIXED"
        scene.render.threads = threads
    marker.update(threads=threads or os.cpu_count(), threads_from=threads_from or "all cores")
    try:
        plan = use_device(scene, args.device, args.cycles_device)
    except DeviceError as exc:
        print(f"braas-hpc: {exc}", file=sys.stderr, flush=True)
        marker.update(state="failed", exit_code=4, error=str(exc), finished=time.time())
        write_json_atomic(marker_path, marker)
        return 4
    marker.update(device=plan.note, gpus=plan.gpus)
    print(f"braas-hpc: device {plan.note}; {marker['threads']} threads ({marker['threads_from']})", flush=True)
    print(f"braas-hpc: {watchdog.start(marker_path, os.environ)}", flush=True)
    extension = EXTENSIONS[args.format] if parts is None else "exr"
    current = [frames[0] if frames else 0]
    bpy.app.handlers.render_stats.append(preview.stats_printer(args.task, lambda: current[0]))
    shown = ""  # this task's newest preview
    for index, frame in enumerate(frames, start=1):  # a split still's "frames" are its parts
        current[0] = frame
        final = os.path.join(out_dir, f"frame_{frame:06d}.{extension}" if parts is None else parts.file_name(frame))
        started = time.monotonic()
        if os.path.isfile(final) and os.path.getsize(final) > 0:
            status = "skipped"
        else:
            temp = os.path.join(out_dir, f".frame_{frame:06d}.task{args.task}.part.{extension}")
            marker["current"] = {"frame": frame, "started": time.time()}  # what the watchdog times
            write_json_atomic(marker_path, marker)
            try:
                if parts is not None:  # the part's own seed and samples, in its record too
                    marker.setdefault("parts", {})[str(frame)] = split_part.use_part(scene, parts, frame)
                render_frame(scene, frame if parts is None else parts.frame, temp, final)
                status = "rendered"
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the others
                print(f"braas-hpc: frame {frame} failed: {exc}", file=sys.stderr, flush=True)
                status = "failed"
        seconds = time.monotonic() - started
        marker["current"] = None
        marker[status].append(frame)  # type: ignore[union-attr]
        if status == "rendered":
            marker["timings"][str(frame)] = round(seconds, 3)  # type: ignore[index]
            shown = show(status_dir, final, frame, scene, shown)
        write_json_atomic(marker_path, marker)
        print(f"BRAAS-PROGRESS task={args.task} frame={frame} done={index} total={len(frames)} "
              f"seconds={seconds:.2f} status={status}", flush=True)
    code = 1 if marker["failed"] else 0
    marker.update(state="done" if code == 0 else "failed", exit_code=code, finished=time.time())
    write_json_atomic(marker_path, marker)
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Frames and marker are on disk: leave at once. Blender's own shutdown can hang after a scene's
    # Python driver was refused (seen with the bpy module), which would hold the task until its walltime.
    os._exit(code)
