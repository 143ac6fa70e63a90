"""What the panel edits (saved with the scene) and the jobs list (runtime only, rebuilt from the registry)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    StringProperty,
)

from ..core.presets import preset_files


def _preset_items(_self: object, _context: object) -> list[tuple[str, str, str]]:
    # Blender keeps no reference to the strings of a dynamic enum: hold them in a module global.
    global _PRESET_ITEMS
    _PRESET_ITEMS = [(name, name, f"Render with the {name} preset") for name in sorted(preset_files())]
    return _PRESET_ITEMS


_PRESET_ITEMS: list[tuple[str, str, str]] = []


def _preset_chosen(settings: JobSettings, context: bpy.types.Context) -> None:
    """A cluster's CPU/GPU choice from the preferences becomes the job's default device."""
    from .addon import preferences

    item = preferences().presets.get(settings.preset)
    if item is not None:
        settings.device = item.device


class JobSettings(bpy.types.PropertyGroup):
    preset: EnumProperty(name="Cluster", items=_preset_items, description="Where to render", update=_preset_chosen)
    # More clusters for the same animation (core.group), comma-separated preset names; toggled by the
    # buttons beside the cluster (ops_jobs.BRAAS_HPC_OT_also_on). Empty: the one cluster above.
    also_on: StringProperty(name="Also on", description="Other clusters that render part of the same animation: "
                            "frames go to whichever renders them soonest")
    project: StringProperty(name="Project", description="Names the job (default: the .blend file's name)")
    email: StringProperty(name="E-mail", description="Mail when the job ends or fails (where the site sends mail)")
    animation: BoolProperty(name="Animation", default=True,
                            description="Render the frame range; off: the current frame")
    frames_mode: EnumProperty(name="Frames", items=[("RANGE", "Scene range", "The scene's start, end and step"),
                                                     ("CUSTOM", "Custom", "A frame set such as 1-10,20,30-40:2")])
    custom_frames: StringProperty(name="Frame set", default="1-10", description="e.g. 1-100, 1-100:5, 1,5,9-12")
    pack: EnumProperty(name="Send", items=[("packed", "Packed .blend",
                                            "One file with every resource packed in; a scene using files Blender "
                                            "cannot pack (sequences, movies, caches) is sent as a folder"),
                                           ("dir", "Folder with dependencies",
                                            "The .blend and the files it uses; unchanged files are not sent again")])
    walltime_min: IntProperty(name="Walltime (min)", default=0, min=0, soft_max=2880,
                              description="Per task; 0: the partition's default")
    chunk: IntProperty(name="Frames per task", default=1, min=1, soft_max=100)
    max_parallel: IntProperty(name="Max parallel tasks", default=0, min=0, description="0: no limit")
    split_samples: IntProperty(name="Split samples", default=0, min=0, soft_max=64,
                               description="A still only: render its samples as this many tasks, each its own range "
                               "of them, merged and denoised on the cluster into one image (0 or 1: one task)")
    retries: IntProperty(name="Automatic retries", default=2, min=0, max=10,
                         description="Rounds of lost frames (failed, timed out, preempted tasks) resubmitted "
                         "without asking")
    device: EnumProperty(name="Device", items=[("CPU", "CPU", ""), ("GPU", "GPU", "")])
    gpu_backend: EnumProperty(name="GPU backend", items=[
        ("", "Partition's", "What the partition's GPUs use (CUDA on NVIDIA, HIP on AMD, oneAPI on Intel)"),
        ("CUDA", "CUDA", ""), ("OPTIX", "OptiX", "NVIDIA RTX ray tracing"), ("HIP", "HIP", "AMD"),
        ("ONEAPI", "oneAPI", "Intel"), ("METAL", "Metal", "Apple")])
    gpu_with_cpu: BoolProperty(name="Also use the CPU cores", default=False,
                               description="Render with the node's cores next to its GPUs")
    partition: StringProperty(name="Partition", description="Empty: the preset's default for the device")
    account: StringProperty(name="Account", description="Empty: the preset's")
    video_codec: EnumProperty(name="Movie", items=[
        ("h264", "H.264", "MP4 that plays everywhere"), ("prores", "ProRes", "MOV for editing (ProRes 422 HQ)"),
        ("av1", "AV1", "Small MP4 for the web")], description="The codec of the movie made of a job's frames")
    video_in_finish: BoolProperty(name="Movie on the cluster", default=False,
                                  description="Make the movie in the job's finish step, where the cluster's preset "
                                  "names an ffmpeg; otherwise Make Movie makes it here after the download")


def also_on(settings: JobSettings) -> list[str]:
    """The other clusters chosen for this job (those that still exist), beside `settings.preset`."""
    known = preset_files()
    chosen = [p.strip() for p in settings.also_on.split(",")]
    return [p for p in dict.fromkeys(chosen) if p and p != settings.preset and p in known]


class GroupMemberItem(bpy.types.PropertyGroup):
    """One cluster's share of a job over several clusters; `name` is its preset."""

    job: StringProperty()  # its member job, "" until it got frames
    state: StringProperty()
    frames_done: IntProperty()
    frames_held: IntProperty()  # handed to it and not rendered yet
    seconds_per_frame: FloatProperty()  # 0: not measured yet
    slots: IntProperty()  # tasks at once
    error: StringProperty()  # why its cluster did not answer the last look ("" when it did)


class JobItem(bpy.types.PropertyGroup):
    # `name` is the job's name.
    preset: StringProperty()
    state: StringProperty(default="UNKNOWN")
    frames_done: IntProperty()
    frames_total: IntProperty()
    scheduler_ids: StringProperty()
    missing: StringProperty()
    created: StringProperty()
    sort_key: StringProperty()  # the creation time, fixed width: a float property is single precision
    local_dir: StringProperty(subtype="DIR_PATH")
    thumbnail: StringProperty(subtype="FILE_PATH")
    video: StringProperty(subtype="FILE_PATH")  # the movie of the frames, here
    preview: StringProperty(subtype="FILE_PATH")  # while it runs: the newest frame's small JPEG (core.live)
    progress: StringProperty()  # while it runs: each task within its frame
    is_group: BoolProperty()  # one animation over several clusters: `members` is each one's share
    members: CollectionProperty(type=GroupMemberItem)
    pool: IntProperty()  # a group's frames not handed out yet
    moves: StringProperty()  # what a look at the group did last (batches handed out, chunks moved)


class Runtime(bpy.types.PropertyGroup):
    jobs: CollectionProperty(type=JobItem)
    active_job: IntProperty(default=0)


CLASSES = (JobSettings, GroupMemberItem, JobItem, Runtime)

