"""What a job is written with and the files it is made of on the cluster: the kit of its rounds (the
Blender recorded for the preset, the cluster scripts and what a job checks of them), its job and finish
scripts, its frames file and job.json."""

from __future__ import annotations

import dataclasses
import json
import time

from . import VERSION, rounds
from .cluster_blender import installed_blender
from .jobs import JobPaths, JobSpec, frames_file_text
from .local_blender import local_blender
from .presets import Preset
from .rounds import RoundKit
from .schedulers import Scheduler, scheduler_for
from .schedulers.base import Round, Trust
from .scripts import git_scripts_dir, scripts_version, shipped_digests


def job_json(spec: JobSpec, kit: RoundKit, estimate: dict | None = None) -> str:
    """`estimate`: what core.estimate expected before Submit; the finish step puts it beside the actual."""
    return json.dumps({"spec": spec.to_dict(), "kit": kit.to_dict(), "braas_hpc": VERSION, "submitted": time.time(),
                       **({"estimate": estimate} if estimate else {})}, indent=1)


def cluster_script(preset: Preset, paths: JobPaths, name: str) -> str:
    """A cluster script's path: this release's copy, or the site's own from git."""
    if preset.scripts_git:
        return f"{git_scripts_dir(paths.root, preset.scripts_branch)}/{name}"
    return f"{paths.scripts_dir(scripts_version())}/{name}"


def blender_command(preset: Preset) -> list[str]:
    """How the job starts Blender: the preset's command; on this computer without one, the Blender found here."""
    return local_blender() if preset.is_local and not preset.blender else [preset.blender]


def kit_for(preset: Preset, paths: JobPaths) -> RoundKit:
    """What the job's rounds are written with (see rounds.RoundKit), resolved now, on this computer: the
    Blender `braas-hpc install` recorded for the preset (a path, or a module to load), and what a job
    checks before it runs: each cluster script's SHA-256 (not known for a site's own scripts from git),
    and that an unpacked Blender still has its files."""
    installed = installed_blender(preset.name)  # none for `local`: `install` refuses it
    if installed is not None:
        preset = dataclasses.replace(preset, blender=installed.blender, env=(*preset.env, *installed.env))
    tree = (installed.tree, installed.tree_sha256) if installed is not None else ("", "")

    def trust(name: str) -> Trust:
        return Trust("" if preset.scripts_git else shipped_digests()[name], *tree)

    return RoundKit(preset, tuple(blender_command(preset)), cluster_script(preset, paths, "render_task.py"),
                    cluster_script(preset, paths, "finish_task.py"), trust("render_task.py"), trust("finish_task.py"))


def job_script(spec: JobSpec, preset: Preset, paths: JobPaths, round_: Round | None = None,
               scheduler: Scheduler | None = None, kit: RoundKit | None = None) -> str:
    return rounds.job_script(spec, kit or kit_for(preset, paths), paths, round_ or Round(0, len(spec.tasks)),
                             scheduler or scheduler_for(preset.scheduler))


def finish_script(spec: JobSpec, preset: Preset, paths: JobPaths, round_: Round,
                  scheduler: Scheduler | None = None, kit: RoundKit | None = None) -> str:
    return rounds.finish_script(spec, kit or kit_for(preset, paths), paths, round_,
                                scheduler or scheduler_for(preset.scheduler))


def job_files(spec: JobSpec, preset: Preset, paths: JobPaths, estimate: dict | None = None) -> dict[str, str]:
    """The job's own files by their path on the cluster, round 0's scripts among them."""
    kit = kit_for(preset, paths)
    return {paths.frames_file: frames_file_text(spec.tasks), paths.job_json: job_json(spec, kit, estimate),
            paths.script: job_script(spec, preset, paths, kit=kit),
            rounds.finish_file(paths, 0): finish_script(spec, preset, paths, Round(0, len(spec.tasks)), kit=kit)}
