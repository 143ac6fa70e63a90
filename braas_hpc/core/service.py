"""The service layer: what the CLI verbs and the add-on's operators call. Async, bpy-free.

Submission: validate -> pack -> upload -> write the array script -> submit -> register.
The `local` preset goes the same way, to this computer's own queue (core.schedulers.local).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from . import VERSION, intents, progress, registry, rounds, store
from .blender_version import cluster_warning, command_version, file_version
from .cluster_blender import installed_blender
from .context import JobContext
from .errors import BraasError, RemoteCommandError, SchedulerError, UsageError
from .frames import chunk_frames, format_frames
from .jobs import JobPaths, JobSpec, frames_file_text, store_dir
from .local_blender import local_blender
from .packing import MAIN_BLEND, CannotPack, UnreadableBlend, check_missing, pack_key, pack_scene, stage_tree
from .presets import Preset, load_preset
from .rounds import RoundKit
from .schedulers import Scheduler, scheduler_for
from .schedulers.base import CANCELLED, NODE_NAME, PENDING, TERMINAL, Round, Trust
from .scripts import ScriptsReport, git_scripts_dir, scripts_for, scripts_version, shipped_digests
from .spec import SubmitRequest, build_spec
from .store import HashCache, StoreFile, UploadReport
from .transport import Transport, quote_command, transport_for
from .transport.base import sha256_file
from .tree import ensure_root, remote_root

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

    def to_json(self) -> dict[str, object]:
        return {"job": self.job, "preset": self.preset, "frames": self.frames, "tasks": self.tasks,
                "scheduler_ids": list(self.scheduler_ids), "job_dir": self.job_dir, **self.upload.to_json(),
                "finish_id": self.finish_id, "scripts_updated": list(self.scripts_updated),
                "warnings": list(self.warnings)}


@dataclass(frozen=True)
class PreparedJob(JobPaths):
    """A job's paths plus what its upload cost (a JobPaths, so callers that only need paths are unchanged)."""

    upload: UploadReport = UploadReport()
    scripts: ScriptsReport | None = None


def _job_json(spec: JobSpec, kit: RoundKit) -> str:
    return json.dumps({"spec": spec.to_dict(), "kit": kit.to_dict(), "braas_hpc": VERSION, "submitted": time.time()},
                      indent=1)


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


async def _upload_inputs(transport: Transport, staging: Path, paths: JobPaths, preset: Preset,
                         inputs: Callable[[], Awaitable[UploadReport]]) -> tuple[UploadReport, ScriptsReport]:
    """The job's own small files directly; its inputs (`inputs`) through the content-addressed store.
    The cluster scripts are checked first (one command) and installed or repaired when they differ."""
    await ensure_root(transport, paths.root, [paths.in_dir, paths.out_dir, paths.log_dir, paths.status_dir])
    scripts = await scripts_for(transport, preset, paths.root, update=False)
    report = await inputs()
    files = [("frames.txt", paths.frames_file), ("job.json", paths.job_json), ("job.sh", paths.script),
             ("finish.sh", rounds.finish_file(paths, 0))]
    for name, target in files:
        await transport.put(staging / name, target)
    return report, scripts


async def _packed_inputs(transport: Transport, spec: JobSpec, paths: JobPaths, staging: Path,
                         cache: HashCache) -> Callable[[], Awaitable[UploadReport]]:
    """Packed mode. Blender never writes the same bytes twice, so an unchanged scene is recognised by
    its inputs (pack_key) and the copy packed last time is linked again without packing or sending it.
    A scene using files Blender cannot pack (sequences, movies, caches) goes as a folder, with a note;
    that too is remembered by its key, so an unchanged scene is not given to Blender to pack again."""
    scene = Path(spec.scene)
    with contextlib.suppress(UnreadableBlend):  # Blender may still open what BAT cannot read: it says
        await asyncio.to_thread(check_missing, scene)
    try:
        key: str | None = await asyncio.to_thread(pack_key, scene, cache.digest)
    except Exception:  # noqa: BLE001 - BAT cannot read every .blend; packing without the shortcut still works
        key = None
    why = cache.unpackable(key) if key else None
    if why:
        return await _as_folder(transport, spec, paths, staging, cache, why)
    known = cache.packed(key) if key else None
    if known and not await store.lacking(transport, paths.root, [known]):
        async def link_again() -> UploadReport:
            await store.link_inputs(transport, paths.root, paths.in_dir, {MAIN_BLEND: known})
            return UploadReport(skipped_files=1)
        return link_again
    packed = staging / "packed" / MAIN_BLEND
    try:
        await pack_scene(scene, packed)
    except CannotPack as exc:
        why = f"{exc}: it was sent as a folder with its files instead (as with --pack dir)"
        if key:
            cache.remember_unpackable(key, why)
        return await _as_folder(transport, spec, paths, staging, cache, why)

    async def send() -> UploadReport:
        digest = await asyncio.to_thread(sha256_file, packed)
        report = await store.upload_inputs(transport, paths.root, paths.in_dir, {MAIN_BLEND: packed},
                                           lambda _: digest)
        if key:
            cache.remember_packed(key, digest)
        return report
    return send


async def _as_folder(transport: Transport, spec: JobSpec, paths: JobPaths, staging: Path, cache: HashCache,
                     why: str) -> Callable[[], Awaitable[UploadReport]]:
    """Packed mode for a scene Blender cannot pack: the folder, as in dir mode, with `why` as a note."""
    progress.report(why)  # the notes of the result say it again, for whoever shows results
    as_folder = await _dir_inputs(transport, spec, paths, staging, cache)

    async def send_folder() -> UploadReport:
        report = await as_folder()
        return dataclasses.replace(report, notes=(*report.notes, why))
    return send_folder


async def _dir_inputs(transport: Transport, spec: JobSpec, paths: JobPaths, staging: Path,
                      cache: HashCache) -> Callable[[], Awaitable[UploadReport]]:
    """Directory mode: the scene and its dependency tree, staged by BAT (missing files refused here)."""
    tree = await asyncio.to_thread(stage_tree, Path(spec.scene), staging / "tree")

    def digest(path: Path) -> str:
        return tree.digest(path, cache.digest, sha256_file)

    async def send() -> UploadReport:
        report = await store.upload_inputs(transport, paths.root, paths.in_dir, tree.files, digest, tree.copies)
        # Files from outside the scene's folder travel too (under _outside_project/); the user is told.
        return dataclasses.replace(report, outside_project=tree.outside)
    return send


async def prepare_job(spec: JobSpec, preset: Preset, transport: Transport) -> PreparedJob:
    """Pack (or stage) locally first, so missing files are refused before anything is sent; then upload
    what the cluster's store lacks and write the job's files. Returns the paths and the upload's cost."""
    paths = JobPaths(remote_root(preset), spec.name)
    with tempfile.TemporaryDirectory(prefix="braas-hpc-") as temp, HashCache() as cache:
        staging = Path(temp)
        stage = _dir_inputs if spec.pack == "dir" else _packed_inputs
        progress.report("packing" if spec.pack == "packed" else "collecting dependencies")
        inputs = await stage(transport, spec, paths, staging, cache)
        kit = kit_for(preset, paths)
        (staging / "job.sh").write_text(job_script(spec, preset, paths, kit=kit))
        (staging / "finish.sh").write_text(finish_script(spec, preset, paths, Round(0, len(spec.tasks)), kit=kit))
        (staging / "frames.txt").write_text(frames_file_text(spec.tasks))
        (staging / "job.json").write_text(_job_json(spec, kit))
        report, scripts = await _upload_inputs(transport, staging, paths, preset, inputs)
    return PreparedJob(paths.root, paths.name, report, scripts)


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


def dry_run(request: SubmitRequest) -> DryRun:
    """The exact batch script and submit command, without packing or connecting."""
    spec, preset = build_spec(request)
    paths = JobPaths(remote_root(preset, placeholder=True), spec.name)
    scheduler = scheduler_for(preset.scheduler)
    round_ = Round(0, len(spec.tasks))
    commands = [quote_command(scheduler.submit_argv(paths.script, task))
                for task in scheduler.submissions(preset, round_)]
    after = scheduler.submit_argv(rounds.finish_file(paths, 0), options=scheduler.after_argv(["<ID>"]))
    kit = kit_for(preset, paths)
    return DryRun(job_script(spec, preset, paths, kit=kit), "\n".join(commands), frames_file_text(spec.tasks),
                  paths.job_dir, finish_script(spec, preset, paths, round_, kit=kit), quote_command(after))


async def submit(request: SubmitRequest, built: tuple[JobSpec, Preset] | None = None) -> SubmitResult:
    """Submit a job. Safe to run again after the client was killed half-way (core.intents): the same
    request resumes the same job and no scheduler submission is made twice. `built`: the request's
    build_spec, when the caller has it already."""
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
    paths = await prepare_job(spec, preset, transport)
    progress.report("submitting")
    scheduler = scheduler_for(preset.scheduler)
    round_ = Round(0, len(spec.tasks))
    id_tasks = await _submit_round(transport, scheduler, preset, paths, round_)
    if not registry.has_job(spec.name):
        registry.add_job(spec, paths.root, id_tasks, PENDING)
    finish_id = await _submit_finish(transport, scheduler, paths, round_, list(id_tasks))
    intents.forget(print_)
    updated = paths.scripts.uploaded if paths.scripts else ()
    return SubmitResult(spec.name, preset.name, format_frames(spec.frames), len(spec.tasks), tuple(id_tasks),
                        paths.job_dir, paths.upload, finish_id, updated, warnings)


async def _submit_finish(transport: Transport, scheduler: Scheduler, paths: JobPaths, round_: Round,
                         ids: list[str]) -> str:
    """The finish step after every task of the round (rounds.finish_choices). Its id goes into the job's
    finish.txt, not the registry: it is no render task and must never keep a job "running". A site that
    refuses it costs the summary, not the render."""
    choices = rounds.finish_choices(scheduler, paths, round_, ids)
    for argv in choices:
        try:
            finish_id = scheduler.parse_submit((await transport.run(argv)).stdout)
        except (RemoteCommandError, SchedulerError) as exc:
            if argv is choices[-1]:
                log.warning("the finish step of %s was not submitted: %s", paths.name, exc)
                return ""
            log.info("the finish step of %s cannot avoid %s (%s); submitting it without", paths.name,
                     ", ".join(round_.exclude_nodes), exc)
            continue
        await transport.run(rounds.finish_note(paths, round_.number, finish_id))
        return finish_id
    return ""


async def _submit_round(transport: Transport, scheduler: Scheduler, preset: Preset, paths: JobPaths, round_: Round
                        ) -> dict[str, int]:
    """One array submission, or one job per task on a site without arrays; each made at most once
    (a record beside the script answers a repeated one). Returns each scheduler id's number of tasks."""
    id_tasks = {}
    for argv, tasks in rounds.array_submissions(scheduler, preset, paths, round_):
        id_tasks[scheduler.parse_submit((await transport.run(argv)).stdout)] = tasks
    return id_tasks


# Marks the job cancelled by the user (the cluster's recovery reads it) and prints the recorded answer of
# every render submission of every round.
_CANCEL_SCRIPT = ('touch -- "$1/$2" 2>/dev/null; for f in "$1"/submitted/r*-array "$1"/submitted/r*-task*; do '
                  '[ -s "$f" ] && case "$f" in *.lock|*.part) ;; *) head -n 1 -- "$f" ;; esac; done; exit 0')


async def cancel(job: JobContext) -> tuple[str, ...]:
    """Cancel every scheduler job of a job (all rounds, all array tasks). Returns the ids cancelled."""
    record, scheduler = job.record, job.scheduler
    # The flag first: a finish step about to recover the job sees it and submits nothing (or cancels what
    # it just submitted); then every round's id, also those the cluster's recovery submitted.
    done = await job.transport.run(["sh", "-c", _CANCEL_SCRIPT, "sh", job.paths.job_dir, rounds.CANCELLED_FLAG])
    found = [scheduler.parse_submit(line) for line in done.stdout.splitlines() if line.strip()]
    extra = [job_id for job_id in found if job_id not in record.scheduler_ids]
    ids = [*([] if record.state in TERMINAL else record.scheduler_ids), *extra]
    if not ids:
        return ()
    await job.transport.run(scheduler.cancel_argv(ids))
    registry.cancelled_by_user(record.name, CANCELLED)
    return tuple(ids)


async def resubmit(job: JobContext, missing: list[int], chunk: int | None = None,
                   exclude_nodes: tuple[str, ...] = ()) -> SubmitResult:
    """Submit the missing frames of an ended job again, as a new round with only those frames
    (`chunk` frames per task, default the job's; Slurm avoids `exclude_nodes`)."""
    record, preset, name, scheduler = job.record, job.preset, job.name, job.scheduler
    if not missing:
        raise UsageError(f"job {name} has every frame; nothing to resubmit")
    exclude_nodes = tuple(node.strip() for node in exclude_nodes)  # ignored where the scheduler cannot exclude
    if any(not NODE_NAME.fullmatch(node) for node in exclude_nodes):
        raise UsageError(f"not a node name: {', '.join(n for n in exclude_nodes if not NODE_NAME.fullmatch(n))}")
    spec, paths, transport = record.spec, job.paths, job.transport
    number = record.rounds + 1
    await ensure_root(transport, paths.root)
    scripts = await scripts_for(transport, preset, paths.root, update=False)
    claim = await transport.run(rounds.claim_argv(paths, number), check=False)
    if claim.exit_status != 0:  # the cluster's own recovery took this round: take it as it is
        return await _adopt_round(job, number, scripts)
    tasks = tuple(tuple(t) for t in chunk_frames(sorted(missing), chunk or spec.chunk))
    round_ = Round(number, len(tasks), exclude_nodes)
    with tempfile.TemporaryDirectory(prefix="braas-hpc-") as temp:
        for index, (target, text) in enumerate(rounds.round_files(spec, kit_for(preset, paths), paths, round_, tasks,
                                                                  scheduler).items()):
            (Path(temp) / str(index)).write_text(text)
            await transport.put(Path(temp) / str(index), target)
    ready = f"{paths.job_dir}/submitted/r{number}.claim/ready"  # the files are complete: anyone may submit them
    await transport.run(["sh", "-c", 'printf "%s" "$2" > "$1"', "sh", ready, json.dumps(exclude_nodes)])
    id_tasks = await _submit_round(transport, scheduler, preset, paths, round_)
    registry.add_round(name, id_tasks, PENDING)
    finish_id = await _submit_finish(transport, scheduler, paths, round_, list(id_tasks))
    return SubmitResult(name, preset.name, format_frames(missing), len(tasks), tuple(id_tasks), paths.job_dir,
                        finish_id=finish_id, scripts_updated=scripts.uploaded)


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
    id_tasks = await _submit_round(transport, job.scheduler, job.preset, paths, round_)
    registry.add_round(job.name, id_tasks, PENDING)
    frames = sorted({int(f) for line in lines for f in line.split(",") if f.strip()})
    return SubmitResult(job.name, job.preset.name, format_frames(frames), len(lines), tuple(id_tasks), paths.job_dir,
                        scripts_updated=scripts.uploaded)
