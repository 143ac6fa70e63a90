"""The service layer: what the CLI verbs and the add-on's operators call. Async, bpy-free.

Submission: validate -> pack -> upload -> write the array script -> submit -> register (the middle in
core.delivery). The `local` preset goes the same way, to this computer's own queue (core.schedulers.local).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import batch, delivery, intents, registry, rounds, store
from .blender_version import cluster_warning, command_version, file_version
from .cluster_blender import installed_blender
from .context import JobContext
from .delivery import prepare_job
from .errors import BraasError, UsageError
from .frames import chunk_frames, format_frames
from .job_files import finish_script, job_script, kit_for
from .jobs import JobPaths, JobSpec, frames_file_text, store_dir
from .local_blender import local_blender
from .presets import Preset, load_preset
from .schedulers import scheduler_for
from .schedulers.base import CANCELLED, NODE_NAME, PENDING, TERMINAL, Round
from .scripts import ScriptsReport
from .spec import ACCOUNT_PLACEHOLDER, BLENDER_PLACEHOLDER, SubmitRequest, build_spec
from .store import StoreFile, UploadReport
from .transport import quote_command, transport_for
from .tree import WORKDIR_PLACEHOLDER, ensure_root, remote_root
from .user_presets import how_to_set

log = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int, str], None]  # (frames done, frames total, message)

__all__ = ["GcResult", "SubmitRequest", "SubmitResult", "build_spec", "cancel", "dry_run", "gc", "prepare_job",
           "resubmit", "submit"]


@dataclass(frozen=True)
class SubmitResult:
    job: str
    preset: str
    frames: str
    tasks: int
    scheduler_ids: tuple[str, ...]
    job_dir: str
    upload: UploadReport = UploadReport()  # the job's inputs: sent to the store, or already there
    finish_id: str = ""  # the finish step's scheduler id ("" when the site refused it: see the log)
    scripts_updated: tuple[str, ...] = ()  # cluster scripts this submission had to install or repair
    warnings: tuple[str, ...] = ()  # for the user to read: the job was submitted all the same
    round: int = 0  # the job's round these tasks are (0: its first submission)

    def to_json(self) -> dict[str, object]:
        return {"job": self.job, "preset": self.preset, "frames": self.frames, "tasks": self.tasks,
                "scheduler_ids": list(self.scheduler_ids), "job_dir": self.job_dir, **self.upload.to_json(),
                "finish_id": self.finish_id, "scripts_updated": list(self.scripts_updated),
                "warnings": list(self.warnings)}


def version_warnings(spec: JobSpec, preset: Preset) -> tuple[str, ...]:
    """A warning when the Blender `install` recorded for the cluster is older than the file it will open
    (the scene, or in packed mode the copy this computer's Blender saves). A warning, not a refusal: the
    record can be older than the site's Blender, and nothing is known without one."""
    installed = installed_blender(preset.name)  # none for `local`: `install` refuses it
    if installed is None or not installed.version:
        return ()
    opens = file_version(Path(spec.scene))
    if spec.pack == "packed":
        opens = max(opens, command_version(tuple(local_blender()))[:2])
    warning = cluster_warning(installed.version, opens, preset.name)
    return (warning,) if warning else ()


@dataclass(frozen=True)
class GcResult:
    preset: str
    store_dir: str
    files: tuple[StoreFile, ...]
    removed: bool
    abandoned: tuple[StoreFile, ...] = ()  # temp files of failed uploads, a day old or more (by name)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def abandoned_bytes(self) -> int:
        return sum(f.size for f in self.abandoned)

    def to_json(self) -> dict[str, object]:
        return {"preset": self.preset, "store": self.store_dir, "removed": self.removed,
                "total_bytes": self.total_bytes, "files": [{"sha256": f.digest, "size": f.size} for f in self.files],
                "abandoned_bytes": self.abandoned_bytes,
                "abandoned_uploads": [{"name": f.digest, "size": f.size} for f in self.abandoned]}


async def gc(preset_name: str, remove: bool = False) -> GcResult:
    """Store files that no job's in/ links to and temp files that failed uploads left; removed only with
    `remove` (a dry run by default)."""
    preset = load_preset(preset_name)
    root = remote_root(preset)
    transport = transport_for(preset)
    await ensure_root(transport, root)
    found = await store.scan(transport, root)
    if remove:
        await store.remove(transport, root, found.unreferenced, found.abandoned)
    return GcResult(preset.name, store_dir(root), tuple(found.unreferenced), remove, tuple(found.abandoned))


@dataclass(frozen=True)
class DryRun:
    script: str
    submit_command: str
    frames_file: str
    job_dir: str
    finish_script: str = ""
    finish_command: str = ""
    # What the script shows in place of a value nobody gave yet (placeholder: what to set), for every preset.
    placeholders: dict[str, str] = dataclasses.field(default_factory=dict)


def _placeholders(spec: JobSpec, preset: Preset) -> dict[str, str]:
    shown = {ACCOUNT_PLACEHOLDER: f"your project: give --account, or {how_to_set(preset, 'account', 'PROJECT')}",
             BLENDER_PLACEHOLDER: f"your own Blender build on the cluster: {how_to_set(preset, 'blender', 'PATH')}",
             WORKDIR_PLACEHOLDER: f"your working directory on the cluster: {how_to_set(preset, 'workdir', 'PATH')}"}
    used = {spec.account, preset.blender, WORKDIR_PLACEHOLDER if not (preset.workdir or preset.is_local) else ""}
    return {mark: what for mark, what in shown.items() if mark in used}


def dry_run(request: SubmitRequest) -> DryRun:
    """The exact batch script and submit command, without packing or connecting. A value the preset needs
    and nobody gave yet (account, workdir, an aarch64 Blender) is shown as a placeholder, listed in
    `placeholders`; a real submission refuses it."""
    spec, preset = build_spec(request, dry_run=True)
    paths = JobPaths(remote_root(preset, placeholder=True), spec.name)
    scheduler = scheduler_for(preset.scheduler)
    round_ = Round(0, len(spec.tasks))
    commands = [quote_command(scheduler.submit_argv(paths.script, task))
                for task in scheduler.submissions(preset, round_)]
    after = scheduler.submit_argv(rounds.finish_file(paths, 0), options=scheduler.after_argv(["<ID>"]))
    kit = kit_for(preset, paths)
    return DryRun(job_script(spec, preset, paths, kit=kit), "\n".join(commands), frames_file_text(spec.tasks),
                  paths.job_dir, finish_script(spec, preset, paths, round_, kit=kit), quote_command(after),
                  _placeholders(spec, preset))


async def submit(request: SubmitRequest, built: tuple[JobSpec, Preset] | None = None,
                 estimate: dict | None = None) -> SubmitResult:
    """Submit a job. Safe to run again after the client was killed half-way (core.intents): the same
    request resumes the same job and no scheduler submission is made twice. `built`: the request's
    build_spec, when the caller has it already; `estimate`: core.estimate's, kept in job.json and the
    registry beside the actual."""
    spec, preset = built or build_spec(request)
    remote_root(preset)  # refuse a missing workdir before packing anything
    print_ = intents.fingerprint(request)
    resumed = intents.unfinished(print_)
    if resumed:
        spec = dataclasses.replace(spec, name=resumed)
        log.info("resuming the unfinished submission of %s", resumed)
    intents.remember(print_, spec.name)
    warnings = await asyncio.to_thread(version_warnings, spec, preset)
    transport = transport_for(preset, request.ssh_backend)
    round_ = Round(0, len(spec.tasks))
    delivered = await delivery.deliver(spec, preset, transport, JobPaths(remote_root(preset), spec.name), round_,
                                       estimate)
    paths, id_tasks = delivered.prepared, delivered.id_tasks
    if not registry.has_job(spec.name):
        registry.add_job(spec, paths.root, id_tasks, PENDING)
    if estimate:
        registry.set_estimate(spec.name, estimate)
    intents.forget(print_)
    updated = paths.scripts.uploaded if paths.scripts else ()
    frames = str(spec.split_frame) if spec.split else format_frames(spec.frames)  # a split still: its one frame
    return SubmitResult(spec.name, preset.name, frames, len(spec.tasks), tuple(id_tasks), paths.job_dir, paths.upload,
                        delivered.finish_id, updated, warnings)


# Marks the job cancelled by the user (the cluster's recovery reads it) and prints the recorded answer of
# every render submission of every round.
_CANCEL_SCRIPT = ('touch -- "$1/$2" 2>/dev/null; for f in "$1"/submitted/r*-array "$1"/submitted/r*-task*; do '
                  '[ -s "$f" ] && case "$f" in *.lock|*.part) ;; *) head -n 1 -- "$f" ;; esac; done; exit 0')


async def cancel(job: JobContext) -> tuple[str, ...]:
    """Cancel every scheduler job of a job (all rounds, all array tasks). Returns the ids cancelled.
    One remote call, and a second only for rounds the cluster's recovery submitted that this side does
    not know yet."""
    record, scheduler, transport = job.record, job.scheduler, job.transport
    known = [] if record.state in TERMINAL else list(record.scheduler_ids)
    # The flag first: a finish step about to recover the job sees it and submits nothing (or cancels what
    # it just submitted); then every round's id, also those the cluster's recovery submitted.
    flag = ["sh", "-c", _CANCEL_SCRIPT, "sh", job.paths.job_dir, rounds.CANCELLED_FLAG]
    steps = [batch.Step("flag", flag), *([batch.Step("cancel", scheduler.cancel_argv(known))] if known else [])]
    ahead = batch.Answers() if job.preset.is_local else await batch.run(transport, steps)
    done = (ahead.take("flag") or await transport.run(flag)).check()
    if known:
        (ahead.take("cancel") or await transport.run(scheduler.cancel_argv(known))).check()
        registry.cancelled_by_user(record.name, CANCELLED)  # at once: an unreadable record below still raises
    found = [scheduler.parse_submit(line) for line in done.stdout.splitlines() if line.strip()]
    extra = [job_id for job_id in found if job_id not in record.scheduler_ids]
    if extra:
        await transport.run(scheduler.cancel_argv(extra))
        registry.cancelled_by_user(record.name, CANCELLED)
    return (*known, *extra)


async def resubmit(job: JobContext, missing: list[int], chunk: int | None = None,
                   exclude_nodes: tuple[str, ...] = ()) -> SubmitResult:
    """Submit the missing frames of an ended job again, as a new round with only those frames
    (`chunk` frames per task, default the job's; Slurm avoids `exclude_nodes`)."""
    if not missing:
        raise UsageError(f"job {job.name} has every frame; nothing to resubmit")
    exclude_nodes = tuple(node.strip() for node in exclude_nodes)  # ignored where the scheduler cannot exclude
    if any(not NODE_NAME.fullmatch(node) for node in exclude_nodes):
        raise UsageError(f"not a node name: {', '.join(n for n in exclude_nodes if not NODE_NAME.fullmatch(n))}")
    tasks = tuple(tuple(t) for t in chunk_frames(sorted(missing), chunk or job.record.spec.chunk))
    return await submit_round(job, tasks, exclude_nodes)


async def submit_round(job: JobContext, tasks: tuple[tuple[int, ...], ...], exclude_nodes: tuple[str, ...] = ()
                       ) -> SubmitResult:
    """A new round of the job with these array tasks (frames each): a resubmission, or the frames a group
    member was given (core.group)."""
    record, preset, name, scheduler = job.record, job.preset, job.name, job.scheduler
    spec, paths = record.spec, job.paths
    number = record.rounds + 1
    round_ = Round(number, len(tasks), exclude_nodes)
    files = rounds.round_files(spec, kit_for(preset, paths), paths, round_, tasks, scheduler)
    # Once the files are complete, the claim is marked ready: anyone may then submit them.
    files[f"{paths.job_dir}/submitted/r{number}.claim/ready"] = json.dumps(exclude_nodes)
    try:
        id_tasks, finish_id, scripts = await delivery.submit_next_round(job, round_, files)
    except delivery.RoundTaken as taken:  # the cluster's own recovery took this round: take it as it is
        return await _adopt_round(job, number, taken.scripts)
    registry.add_round(name, id_tasks, PENDING)
    return SubmitResult(name, preset.name, format_frames(f for t in tasks for f in t), len(tasks), tuple(id_tasks),
                        paths.job_dir, finish_id=finish_id, scripts_updated=scripts.uploaded, round=number)


async def _adopt_round(job: JobContext, number: int, scripts: ScriptsReport) -> SubmitResult:
    """Round `number` of the job as the cluster's recovery submitted it (rounds.recover_here): its frames
    file and the nodes it avoids are read back, its guarded submissions answer with the ids they made
    (or are made now, if the cluster stopped before making them)."""
    paths, transport = job.paths, job.transport
    read = await transport.run(["sh", "-c", 'cat -- "$1" || exit 3; printf "\\0"; cat -- "$2"', "sh",
                                f"{paths.job_dir}/submitted/r{number}.claim/ready", paths.round_frames_file(number)],
                               check=False)
    ready, _, frames_text = read.stdout.partition("\0")
    if read.exit_status != 0 or not frames_text.strip():
        raise BraasError(f"round {number} of job {job.name} is being submitted by the cluster right now; "
                         "it is taken up at the next look")
    exclude = tuple(json.loads(ready or "[]"))
    lines = [line for line in frames_text.splitlines() if line.strip()]
    round_ = Round(number, len(lines), exclude)
    id_tasks = await delivery.submit_round(transport, job.scheduler, job.preset, paths, round_)
    registry.add_round(job.name, id_tasks, PENDING)
    frames = sorted({int(f) for line in lines for f in line.split(",") if f.strip()})
    return SubmitResult(job.name, job.preset.name, format_frames(frames), len(lines), tuple(id_tasks), paths.job_dir,
                        scripts_updated=scripts.uploaded, round=number)
