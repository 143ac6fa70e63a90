"""Panels: "BRaaS-HPC" in Render Properties, and the add-on's preferences. Drawing only reads state."""

from __future__ import annotations

import contextlib
import os
import time

import bpy

from ..addon_kit.text import wrap_text
from ..core.errors import BraasError
from ..core.presets import load_preset, unconfirmed_summary
from ..core.schedulers.base import TERMINAL
from . import addon, checks, groups, jobs_list, ops_estimate, ops_jobs, props
from .addon import runtime

STATE_ICONS = {"PENDING": "TIME", "RUNNING": "PLAY", "COMPLETED": "CHECKMARK", "FAILED": "ERROR",
               "CANCELLED": "CANCEL", "TIMEOUT": "TIME", "UNKNOWN": "QUESTION"}
_previews: dict[str, object] = {}


def _thumbnails() -> object:
    if "collection" not in _previews:
        import bpy.utils.previews

        _previews["collection"] = bpy.utils.previews.new()
    return _previews["collection"]


_live_shown: dict[str, str] = {}  # job -> the preview file (and its time) its icon was loaded from


def _live_icon(job: str, path: str) -> int:
    """The icon of a running job's newest preview: one icon per job, loaded again when a newer preview
    replaced the file (the collection would keep the first picture under the same name)."""
    thumbnails = _thumbnails()
    key = f"live:{job}"
    try:
        seen = f"{path}@{os.stat(path).st_mtime_ns}"
    except OSError:
        return 0
    if _live_shown.get(job) != seen or key not in thumbnails:
        thumbnails.load(key, path, "IMAGE", force_reload=True)
        _live_shown[job] = seen
    return thumbnails[key].icon_id


def release_thumbnails() -> None:
    _live_shown.clear()
    collection = _previews.pop("collection", None)
    if collection is not None:
        import bpy.utils.previews

        bpy.utils.previews.remove(collection)


def draw_status(layout: bpy.types.UILayout) -> None:
    """The status line: what runs now with its progress bar and Abort, or the last message."""
    active = runtime.busy()  # the jobs follower aside: it runs as long as a job is active
    visible = [op for op in active if op.kind not in ("refresh", "registry", "notify")] or active
    for operation in visible[:3]:
        snap = operation.snapshot()
        row = layout.row(align=True)
        fraction = snap.fraction
        text = f"{snap.label}: {snap.stage}"
        if fraction is not None:
            text += f" {snap.done / 1e6:.1f}/{snap.total / 1e6:.1f} MB" if snap.total > 10_000 else \
                f" {snap.done}/{snap.total}"
        else:
            text += f" ({time.monotonic() - snap.started:.0f} s)"
        row.progress(factor=fraction if fraction is not None else 0.0, type="BAR", text=text)
    if active:
        layout.operator("braas_hpc.abort", icon="CANCEL")
    if runtime.state.question is not None:
        layout.operator("braas_hpc.answer_prompt", text="Answer the cluster's question", icon="LOCKED")
    message = runtime.state.message
    if message.text and not visible:
        icon = {"ERROR": "ERROR", "WARNING": "INFO"}.get(message.level, "CHECKMARK")
        for index, line in enumerate(wrap_text(message.text, 90)[:4]):
            layout.label(text=line, icon=icon if index == 0 else "BLANK1")


class BRAAS_HPC_PT_main(bpy.types.Panel):
    bl_label = "BRaaS-HPC"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"

    def draw(self, context: bpy.types.Context) -> None:
        draw_status(self.layout)


class BRAAS_HPC_PT_new_job(bpy.types.Panel):
    bl_label = "New Job"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_parent_id = "BRAAS_HPC_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.braas_hpc
        layout = self.layout
        layout.use_property_split = True
        layout.prop(settings, "preset")
        _draw_also_on(layout, settings)
        layout.label(text=ops_jobs.preset_summary(settings.preset), icon="INFO")
        unconfirmed = _unconfirmed(settings.preset)
        for line in wrap_text(unconfirmed, 70) if unconfirmed else ():
            layout.label(text=line, icon="QUESTION")
        versions, warning = checks.blender_versions(settings.preset, settings.pack)
        layout.label(text=versions, icon="ERROR" if warning else "BLENDER")
        for line in wrap_text(warning, 70) if warning else ():
            layout.label(text=line, icon="BLANK1")
        layout.prop(settings, "project", placeholder=bpy.path.display_name_from_filepath(bpy.data.filepath))
        layout.prop(settings, "email")
        layout.prop(settings, "pack")
        layout.separator()
        layout.prop(settings, "frames_mode")
        if settings.frames_mode == "CUSTOM":
            layout.prop(settings, "custom_frames")
        else:
            layout.prop(settings, "animation")
        layout.prop(settings, "chunk")
        layout.prop(settings, "max_parallel")
        layout.prop(settings, "walltime_min")
        layout.prop(settings, "video_in_finish")
        layout.prop(settings, "retries")
        layout.separator()
        layout.prop(settings, "device", expand=True)
        if settings.device == "GPU":
            layout.prop(settings, "gpu_backend")
            layout.prop(settings, "gpu_with_cpu")
        layout.prop(settings, "partition")
        layout.prop(settings, "account")
        row = layout.row()
        row.scale_y = 1.4
        row.operator("braas_hpc.submit", icon="RENDER_ANIMATION")
        if checks.is_still(settings):  # its samples can go to several tasks, merged on the cluster
            row.prop(settings, "split_samples")
        row.operator("braas_hpc.estimate", icon="TIME")
        lines, warned = ops_estimate.shown_lines(settings)
        for index, line in enumerate(wrapped for text in lines for wrapped in wrap_text(text, 70)):
            layout.label(text=line, icon=("ERROR" if warned else "TIME") if index == 0 else "BLANK1")
        if checks.has_scripts():  # the file's scripts run on the cluster only when asked for, job by job
            row = layout.row()
            row.enabled = not bpy.app.autoexec_fail
            row.operator("braas_hpc.submit", text="Submit and Run Its Scripts", icon="SCRIPT").allow_scripts = True
            if bpy.app.autoexec_fail:
                layout.label(text="Blender blocked this file's scripts: reload it trusted to run them", icon="INFO")


def _also_on_choices(settings: bpy.types.PropertyGroup) -> list[str]:
    """The clusters a job may also go to: the ones set up in the preferences and enabled, and this computer."""
    try:
        names = [item.name for item in addon.preferences().presets if item.enabled]
    except BraasError:  # registered by hand: no preferences
        names = []
    return [name for name in dict.fromkeys([*names, "local"]) if name != settings.preset]


def _draw_also_on(layout: bpy.types.UILayout, settings: bpy.types.PropertyGroup) -> None:
    """A toggle per other cluster: pressed ones render part of the same animation (one job over them all)."""
    choices = _also_on_choices(settings)
    if not choices:
        return
    chosen = props.also_on(settings)
    column = layout.column(heading="Also on", align=True)
    grid = column.grid_flow(columns=3, align=True)
    for name in choices:
        grid.operator("braas_hpc.also_on", text=name, depress=name in chosen).preset = name
    if chosen:
        layout.label(text=f"One job over {len(chosen) + 1} clusters: frames go where they render soonest",
                     icon="NETWORK_DRIVE")


class BRAAS_HPC_UL_jobs(bpy.types.UIList):
    def draw_item(self, context: bpy.types.Context, layout: bpy.types.UILayout, data: object, item: object,
                  icon: int, active_data: object, active_property: str, index: int = 0, flt_flag: int = 0) -> None:
        row = layout.row(align=True)
        row.label(text=item.name, icon=STATE_ICONS.get(item.state, "QUESTION"))
        row.label(text=item.preset, icon="NETWORK_DRIVE" if item.is_group else "NONE")
        row.label(text=f"{item.state.lower()} {item.frames_done}/{item.frames_total}")


class BRAAS_HPC_PT_jobs(bpy.types.Panel):
    bl_label = "Jobs"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_parent_id = "BRAAS_HPC_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        state = context.window_manager.braas_hpc
        layout = self.layout
        row = layout.row()
        row.template_list("BRAAS_HPC_UL_jobs", "", state, "jobs", state, "active_job", rows=4)
        row.operator("braas_hpc.refresh_jobs", text="", icon="FILE_REFRESH")
        if following := jobs_list.follower.describe():
            layout.label(text=following, icon="INFO")
        if not 0 <= state.active_job < len(state.jobs):
            return
        job = state.jobs[state.active_job]
        box = layout.box()
        box.label(text=f"{job.name} over {len(job.members)} clusters: {job.state}" if job.is_group else
                  f"{job.name} on {job.preset}: {job.state}")
        if job.frames_total:
            box.progress(factor=job.frames_done / job.frames_total, type="BAR",
                         text=f"{job.frames_done} of {job.frames_total} frames")
        if job.is_group:
            _draw_group(box, job)
        else:
            box.label(text=f"Scheduler ids: {job.scheduler_ids or '-'}   submitted {job.created}")
            if job.missing and job.state in TERMINAL:
                box.label(text=f"Missing frames: {job.missing}")
        for line in wrap_text(job.progress, 70) if job.progress and job.state not in TERMINAL else ():
            box.label(text=line, icon="TIME")
        grid = box.grid_flow(columns=3, align=True)
        grid.operator("braas_hpc.download_job", icon="IMPORT")
        grid.operator("braas_hpc.make_video", icon="FILE_MOVIE")
        grid.operator("braas_hpc.open_folder", icon="FILE_FOLDER")
        grid.operator("braas_hpc.job_info", icon="TEXT")
        if not job.is_group:  # a group hands its lost frames to its clusters again by itself
            grid.operator("braas_hpc.resubmit_failed", icon="RECOVER_LAST")
        grid.operator("braas_hpc.cancel_job", icon="CANCEL")
        grid.operator("braas_hpc.remove_job", icon="TRASH")
        row = box.row(align=True)
        row.prop(context.scene.braas_hpc, "video_codec")
        if job.video:
            row.operator("braas_hpc.open_video", icon="PLAY")
        with contextlib.suppress(BraasError):  # no preferences: the add-on was registered by hand
            box.prop(addon.preferences(), "auto_download")
        if job.preview and job.state not in TERMINAL and (icon := _live_icon(job.name, job.preview)):
            box.label(text=f"Newest frame: {os.path.basename(job.preview)}", icon="IMAGE_DATA")
            box.template_icon(icon_value=icon, scale=8.0)
        elif job.thumbnail:
            thumbnails = _thumbnails()
            if job.thumbnail not in thumbnails:
                thumbnails.load(job.thumbnail, job.thumbnail, "IMAGE")
            box.template_icon(icon_value=thumbnails[job.thumbnail].icon_id, scale=8.0)


def _draw_group(box: bpy.types.UILayout, job: bpy.types.PropertyGroup) -> None:
    """A job over several clusters: each cluster's share, the frames not handed out, the last moves."""
    column = box.column(align=True)
    for member in job.members:
        column.label(text=f"{member.name}: " + groups.member_text(member.state, member.frames_done, member.frames_held,
                                                                  member.seconds_per_frame, member.slots),
                     icon=STATE_ICONS.get(member.state, "QUESTION"))
        if member.error:
            column.label(text=f"    not answering: {member.error}", icon="ERROR")
    if job.pool and job.state not in TERMINAL:
        box.label(text=f"{job.pool} frame(s) not handed out yet: they go to the cluster that is free first",
                  icon="TIME")
    for index, line in enumerate(wrap_text(f"Last moves: {job.moves}", 70) if job.moves else ()):
        box.label(text=line, icon="FORWARD" if index == 0 else "BLANK1")
    if job.missing and job.state in TERMINAL:
        box.label(text=f"Frames given up: {job.missing}")


def draw_preferences(prefs: bpy.types.AddonPreferences, context: bpy.types.Context,
                     layout: bpy.types.UILayout) -> None:
    layout.label(text="Cluster presets")
    row = layout.row()
    row.template_list("BRAAS_HPC_UL_presets", "", prefs, "presets", prefs, "active_preset", rows=4)
    column = row.column(align=True)
    column.operator("braas_hpc.preset_add", text="", icon="ADD")
    column.operator("braas_hpc.preset_add_custom", text="", icon="PLUS")
    column.operator("braas_hpc.preset_remove", text="", icon="REMOVE")
    column.operator("braas_hpc.presets_reload", text="", icon="FILE_REFRESH")
    if 0 <= prefs.active_preset < len(prefs.presets):
        _draw_preset(prefs.presets[prefs.active_preset], layout.box())
    row = layout.row(align=True)
    row.operator("braas_hpc.test_connections", icon="LINKED")
    row.operator("braas_hpc.find_workdirs", icon="VIEWZOOM")
    row.operator("braas_hpc.install", icon="IMPORT")
    layout.label(text="Each runs on every enabled cluster at once; results show under each cluster.")
    draw_status(layout)
    layout.separator()
    layout.prop(prefs, "storage_dir")
    layout.prop(prefs, "auto_download")
    layout.prop(prefs, "notify_desktop")
    layout.label(text="Blender for clusters (Install): a download link and its SHA-256, or empty for scripts only")
    layout.prop(prefs, "blender_version")
    layout.prop(prefs, "blender_url")
    layout.prop(prefs, "blender_sha256")


def _draw_preset(item: object, box: bpy.types.UILayout) -> None:
    box.use_property_split = True
    box.label(text=f"{item.title or item.name}" + (f" (from {item.base})" if item.base else ""))
    if item.error:
        box.label(text=item.error, icon="ERROR")
    if not item.base:
        box.prop(item, "scheduler")
    for key in ("host", "port", "user", "key_file", "ssh_backend", "proxy_jump", "known_hosts", "account",
                "partition_cpu", "partition_gpu", "workdir", "blender"):
        box.prop(item, key)
    box.prop(item, "device", expand=True)
    if item.report:
        box.label(text=item.report, icon="INFO")
    for candidate in item.candidates:
        row = box.row()
        state = "writable" if candidate.writable else ("not writable" if candidate.exists else "does not exist")
        row.label(text=f"{candidate.name}  ({candidate.source}; {state})")
        if candidate.writable:
            use = row.operator("braas_hpc.use_workdir")
            use.preset, use.path = item.name, candidate.name


def _unconfirmed(name: str) -> str:
    """The preset's facts no site page confirmed ("unconfirmed: check with your site: ..."); empty when none
    (or when the preset does not load: the summary line above shows that error)."""
    try:
        return unconfirmed_summary(load_preset(name))
    except BraasError:
        return ""


class BRAAS_HPC_UL_presets(bpy.types.UIList):
    def draw_item(self, context: bpy.types.Context, layout: bpy.types.UILayout, data: object, item: object,
                  icon: int, active_data: object, active_property: str, index: int = 0, flt_flag: int = 0) -> None:
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        row.label(text=item.name, icon="ERROR" if item.error else "NETWORK_DRIVE")
        row.label(text=item.report[:60])


CLASSES = (BRAAS_HPC_UL_jobs, BRAAS_HPC_UL_presets, BRAAS_HPC_PT_main, BRAAS_HPC_PT_new_job, BRAAS_HPC_PT_jobs)
