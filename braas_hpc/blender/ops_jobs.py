"""Operators of the Render Properties panel, under `bpy.ops.braas_hpc`.

Each reads what it needs from bpy on the main thread, hands the work to the loop and returns; in
background mode it runs to completion and reports failure as an error (so scripts can rely on it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, StringProperty

from ..core.errors import BraasError, UsageError
from ..core.presets import load_preset
from ..core.spec import SubmitRequest, build_spec
from . import activity, checks, groups, jobs_list, props
from .addon import runtime


def _online_or_error(preset: str) -> None:
    if preset != "local" and not bpy.app.online_access:
        raise UsageError("online access is off (Preferences > System > Network): braas-hpc needs it to reach "
                         f"the {preset} cluster. The local preset works offline.")


def _job_name(operator: bpy.types.Operator, context: bpy.types.Context) -> str:
    if operator.job:
        return operator.job
    runtime_props = context.window_manager.braas_hpc
    if not 0 <= runtime_props.active_job < len(runtime_props.jobs):
        raise UsageError("no job selected")
    return runtime_props.jobs[runtime_props.active_job].name


def _gpu_backend(settings: bpy.types.PropertyGroup) -> str:
    if settings.device != "GPU" or not (settings.gpu_backend or settings.gpu_with_cpu):
        return ""
    backend = settings.gpu_backend
    if not backend:  # "+CPU" with the partition's own backend
        preset = load_preset(settings.preset)
        part = preset.partition(settings.partition.strip() or preset.default_partition(True))
        backend = part.cycles_device.removesuffix("+CPU")
    return backend + ("+CPU" if settings.gpu_with_cpu else "")


def _preset_of(job: str) -> str:
    item = jobs_list.jobs().get(job)
    return item.preset if item is not None else ""


class JobOperator(bpy.types.Operator):
    """Shared by the operators that act on one job (the selected one, or `job`)."""

    bl_options = {"REGISTER", "INTERNAL"}
    job: StringProperty(name="Job", description="Job name; empty: the job selected in the list",
                        options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            name = _job_name(self, context)
            _online_or_error(_preset_of(name) or "remote")
            return self.start(context, name)
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}

    def start(self, context: bpy.types.Context, name: str) -> set[str]:
        raise NotImplementedError


def submit_request(settings: bpy.types.PropertyGroup, allow_scripts: bool = False) -> SubmitRequest:
    """The panel's fields as a request (Submit, and Estimate)."""
    return SubmitRequest(
        scene=Path(checks.scene_file()), preset=settings.preset, frames=checks.frames_of(settings),
        chunk=settings.chunk, device=settings.device, walltime_min=settings.walltime_min or None,
        max_parallel=settings.max_parallel, account=settings.account.strip(),
        partition=settings.partition.strip(), email=settings.email.strip(),
        allow_scripts=allow_scripts, pack=settings.pack, project=settings.project.strip(),
        retries=settings.retries, gpu_backend=_gpu_backend(settings), scene_settings=checks.scene_settings(),
        video=settings.video_codec if settings.video_in_finish else "",
        split_samples=settings.split_samples if settings.split_samples > 1 and checks.is_still(settings) else 0)


class BRAAS_HPC_OT_submit(bpy.types.Operator):
    """Check the scene, upload what the cluster lacks and submit the render job"""

    bl_idname = "braas_hpc.submit"
    bl_label = "Submit Job"
    bl_options = {"REGISTER"}

    # Asked for each submission, never kept (SKIP_SAVE) nor stored in the .blend: a downloaded file must
    # not opt itself into running its code under the user's account.
    allow_scripts: BoolProperty(name="Run the file's scripts", default=False, options={"SKIP_SAVE"},
                                description="Let Python embedded in this .blend (text blocks that register, "
                                            "drivers) run on the cluster, for this job only")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if not self.allow_scripts:
            return self.execute(context)
        return context.window_manager.invoke_confirm(
            self, event, title="Run this file's scripts on the cluster?", confirm_text="Submit and Run",
            message="Python in this .blend will run with your account on the cluster. Only for a file you trust.")

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.braas_hpc
        presets = [settings.preset, *props.also_on(settings)]  # several: one animation over them all
        try:
            for preset in presets:
                _online_or_error(preset)
            if self.allow_scripts:
                checks.check_scripts_allowed()
            for warning in checks.check_scene():
                self.report({"WARNING"}, warning)
            request = submit_request(settings, self.allow_scripts)
            for preset in presets:  # every limit of every cluster checked here, before packing or connecting
                build_spec(dataclasses.replace(request, preset=preset))
            if len(presets) > 1:
                groups.check_request(request)
            saved = checks.save_if_changed()
            if saved:
                self.report({"INFO"}, saved)
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}

        def submitted(result: Any) -> None:
            jobs_list.apply_rows(activity.registry_rows())
            runtime.tell(f"job {result.job} submitted: {result.tasks} task(s), frames {result.frames}"
                         + (f", scheduler id {', '.join(result.scheduler_ids)}" if result.scheduler_ids else "")
                         + "".join(f". Warning: {w}" for w in result.warnings)
                         + "".join(f". Note: {n}" for n in result.upload.notes),
                         "WARNING" if result.warnings or result.upload.notes else "INFO")
            jobs_list.follower.soon()

        allow_scripts = self.allow_scripts

        def again() -> None:
            bpy.ops.braas_hpc.submit(allow_scripts=allow_scripts)

        if len(presets) > 1:
            def group_submitted(result: groups.Submitted) -> None:
                jobs_list.apply_rows(activity.registry_rows())
                runtime.tell(result.text(), "WARNING" if result.warnings else "INFO")
                jobs_list.follower.soon()  # the follower drives the group: hands out the frames held back

            return runtime.launch(self, f"Submitting to {', '.join(presets)}",
                                  lambda: activity.submit_group(request, presets), "submit", group_submitted, again)
        label = "Rendering here" if settings.preset == "local" else f"Submitting to {settings.preset}"
        return runtime.launch(self, label, lambda: activity.submit(request), "submit", submitted, again)


class BRAAS_HPC_OT_also_on(bpy.types.Operator):
    """Render part of this animation on this cluster too: its frames go to whichever cluster renders them
    soonest, into one folder (click again to leave it out)"""

    bl_idname = "braas_hpc.also_on"
    bl_label = "Also On"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}
    preset: StringProperty(name="Cluster", options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.braas_hpc
        chosen = props.also_on(settings)
        if self.preset in chosen:
            chosen.remove(self.preset)
        elif self.preset and self.preset != settings.preset:
            chosen.append(self.preset)
        settings.also_on = ",".join(chosen)
        return {"FINISHED"}


class BRAAS_HPC_OT_refresh_jobs(bpy.types.Operator):
    """Ask the clusters about every job in the list now"""

    bl_idname = "braas_hpc.refresh_jobs"
    bl_label = "Refresh Jobs"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        names = [item.name for item in jobs_list.jobs()] or [row.name for row in activity.registry_rows()]
        if not bpy.app.online_access:
            names = [n for n in names if _preset_of(n) == "local"]
        if not names:
            jobs_list.apply_rows(activity.registry_rows())
            return {"FINISHED"}

        def again() -> None:
            bpy.ops.braas_hpc.refresh_jobs()

        return runtime.launch(self, "Refreshing jobs", lambda: activity.refresh(names), "refresh",
                              jobs_list.show_refresh, again)


class BRAAS_HPC_OT_cancel_job(JobOperator):
    """Cancel the job on the cluster (every round of it)"""

    bl_idname = "braas_hpc.cancel_job"
    bl_label = "Cancel Job"

    def start(self, context: bpy.types.Context, name: str) -> set[str]:
        def cancelled(ids: tuple[str, ...]) -> None:
            runtime.tell(f"job {name}: cancel sent for {', '.join(ids) or 'nothing (already ended)'}")
            jobs_list.follower.soon()

        return runtime.launch(self, f"Cancelling {name}", lambda: activity.cancel(name), "cancel", cancelled)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)


class BRAAS_HPC_OT_download_job(JobOperator):
    """Download the job's new frames (each checked against the cluster's checksum)"""

    bl_idname = "braas_hpc.download_job"
    bl_label = "Download Frames"

    def start(self, context: bpy.types.Context, name: str) -> set[str]:
        folder = jobs_list.job_folder(name)

        def downloaded(got: activity.Downloaded) -> None:
            item = jobs_list.jobs().get(name)
            if item is not None and got.last_frame is not None:
                item.thumbnail = str(got.last_frame)
                item.local_dir = str(folder)
            if item is not None and got.video is not None:
                item.video = str(got.video)
            runtime.tell(f"job {name}: {got.result.downloaded} new frame(s), {got.result.skipped} already here, "
                         f"in {folder}")

        return runtime.launch(self, f"Downloading {name}", lambda: activity.download(name, folder), "download",
                              downloaded)


class BRAAS_HPC_OT_make_video(JobOperator):
    """Make a movie of the job's frames: downloads them (with the cluster's movie, when the job made this one),
    else makes it here (EXR frames with the scene's view transform)"""

    bl_idname = "braas_hpc.make_video"
    bl_label = "Make Movie"

    def start(self, context: bpy.types.Context, name: str) -> set[str]:
        folder = jobs_list.job_folder(name)
        codec = context.scene.braas_hpc.video_codec

        def made(result: Any) -> None:
            item = jobs_list.jobs().get(name)
            if item is not None:
                item.video = str(result.video)
                item.local_dir = str(folder)
            where = "from the cluster" if result.made_on == "cluster" else f"made here in {result.seconds:.1f} s"
            runtime.tell(f"job {name}: movie {result.video.name} ({where})")

        return runtime.launch(self, f"Making the movie of {name}",
                              lambda: activity.make_video(name, folder, codec), "download", made)


class BRAAS_HPC_OT_open_video(bpy.types.Operator):
    """Play the job's movie with this computer's video player"""

    bl_idname = "braas_hpc.open_video"
    bl_label = "Play Movie"
    bl_options = {"REGISTER", "INTERNAL"}
    job: StringProperty(options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        def movie(name: str) -> tuple[str, str]:
            item = jobs_list.jobs().get(name)
            there = item is not None and item.video and Path(item.video).is_file()
            return (item.video if there else ""), "no movie here yet: make it with Make Movie"

        return _open_with_system(self, context, movie)


class BRAAS_HPC_OT_resubmit_failed(JobOperator):
    """Render the frames that are missing again, as a new round of the same job"""

    bl_idname = "braas_hpc.resubmit_failed"
    bl_label = "Resubmit Missing Frames"

    def start(self, context: bpy.types.Context, name: str) -> set[str]:
        def resubmitted(result: Any) -> None:
            runtime.tell(f"job {name}: frames {result.frames} resubmitted as {result.tasks} task(s)")
            jobs_list.mark_pending(name)

        return runtime.launch(self, f"Resubmitting {name}", lambda: activity.resubmit_missing(name), "submit",
                              resubmitted)


class BRAAS_HPC_OT_job_info(JobOperator):
    """Show the job's settings and the end of its logs in a text block"""

    bl_idname = "braas_hpc.job_info"
    bl_label = "Job Info and Logs"

    def start(self, context: bpy.types.Context, name: str) -> set[str]:
        def show(text: str) -> None:
            title = f"braas-hpc {name}"
            block = bpy.data.texts.get(title) or bpy.data.texts.new(title)
            block.clear()
            block.write(text)
            runtime.tell(f"job {name}: info and logs are in the text block '{title}' (Text Editor)")

        return runtime.launch(self, f"Reading logs of {name}", lambda: activity.job_report(name), "info", show)


class BRAAS_HPC_OT_remove_job(JobOperator):
    """Remove the job from this list (its files on the cluster stay); a job still running: cancel it first"""

    bl_idname = "braas_hpc.remove_job"
    bl_label = "Remove from List"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            name = _job_name(self, context)
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        return self.start(context, name)  # offline too: a job recorded as ended needs no cluster

    def start(self, context: bpy.types.Context, name: str) -> set[str]:
        ask = _preset_of(name) == "local" or bpy.app.online_access  # whether it may still run, if not recorded ended

        def removed(record: Any) -> None:  # None: a group, with its member jobs
            items = jobs_list.jobs()
            index = items.find(name)
            if index >= 0:
                items.remove(index)
            state = bpy.context.window_manager.braas_hpc
            state.active_job = min(state.active_job, len(items) - 1)
            where = record.preset if record is not None else "its clusters"
            runtime.tell(f"job {name} removed from the list; its files on {where} are untouched")

        return runtime.launch(self, f"Removing {name}", lambda: activity.forget(name, ask=ask), "forget", removed)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)


class BRAAS_HPC_OT_open_folder(bpy.types.Operator):
    """Open the folder of the job's downloaded frames"""

    bl_idname = "braas_hpc.open_folder"
    bl_label = "Open Folder"
    bl_options = {"REGISTER", "INTERNAL"}
    job: StringProperty(options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        def folder(name: str) -> tuple[str, str]:
            path = jobs_list.job_folder(name)
            return (str(path) if path.is_dir() else ""), f"nothing downloaded yet: {path} does not exist"

        return _open_with_system(self, context, folder)


def _open_with_system(operator: bpy.types.Operator, context: bpy.types.Context,
                      find: Callable[[str], tuple[str, str]]) -> set[str]:
    """Open what `find` gives for the job (its path, or "" and why not) with the OS's own application."""
    try:
        path, missing = find(_job_name(operator, context))
    except BraasError as error:
        operator.report({"ERROR"}, str(error))
        return {"CANCELLED"}
    if not path:
        operator.report({"ERROR"}, missing)
        return {"CANCELLED"}
    if not bpy.app.background:
        bpy.ops.wm.path_open(filepath=path)
    operator.report({"INFO"}, path)
    return {"FINISHED"}


def preset_summary(name: str) -> str:
    """One line under the cluster choice: where jobs go, or what is missing."""
    try:
        preset = load_preset(name)
    except BraasError as error:
        return str(error)
    if preset.is_local:
        return "Renders on this computer"
    where = preset.workdir or "no working directory set (Preferences)"
    return f"{preset.user or '?'}@{preset.host} \u2192 {where}"


CLASSES = (BRAAS_HPC_OT_submit, BRAAS_HPC_OT_also_on, BRAAS_HPC_OT_refresh_jobs, BRAAS_HPC_OT_cancel_job,
           BRAAS_HPC_OT_download_job,
           BRAAS_HPC_OT_resubmit_failed, BRAAS_HPC_OT_job_info, BRAAS_HPC_OT_remove_job, BRAAS_HPC_OT_open_folder,
           BRAAS_HPC_OT_make_video, BRAAS_HPC_OT_open_video)
