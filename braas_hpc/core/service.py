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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from . import VERSION, intents, progress, registry, rounds, store, submit_exchange
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
from .store import HashCache, MissingFromStore, StoreFile, UploadReport
from .submit_exchange import HelperUnavailable
from .transport import CommandResult, Transport, quote_command, transport_for
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


@dataclass(frozen=True)
class StagedInputs:
    """A job's inputs, hashed and ready to go: what `in/` holds (path inside it -> SHA-256) and where each
    file's bytes are on this computer (None: a packed scene remembered in the cluster's store, not kept
    here; if the store lost it, MissingFromStore and the scene is packed again)."""

    entries: dict[str, str]
    sources: dict[str, Path | None]
    copies: frozenset[str] = frozenset()
    outside: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    pack_key: str | None = None  # the scene's pack key when its packed copy is to be remembered

    @property
    def sizes(self) -> dict[str, int]:
        return {d: (p.stat().st_size if p is not None else 0) for d, p in self.sources.items()}


async def _stage_packed(spec: JobSpec, staging: Path, cache: HashCache, reuse: bool = True) -> StagedInputs:
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
        return await _stage_as_folder(spec, staging, cache, why)
    known = cache.packed(key) if key and reuse else None
    if known:
        return StagedInputs({MAIN_BLEND: known}, {known: None})
    packed = staging / "packed" / MAIN_BLEND
    try:
        await pack_scene(scene, packed)
    except CannotPack as exc:
        why = f"{exc}: it was sent as a folder with its files instead (as with --pack dir)"
        if key:
            cache.remember_unpackable(key, why)
        return await _stage_as_folder(spec, staging, cache, why)
    digest = await asyncio.to_thread(sha256_file, packed)
    return StagedInputs({MAIN_BLEND: digest}, {digest: packed}, pack_key=key)


async def _stage_as_folder(spec: JobSpec, staging: Path, cache: HashCache, why: str) -> StagedInputs:
    """Packed mode for a scene Blender cannot pack: the folder, as in dir mode, with `why` as a note."""
    progress.report(why)  # the notes of the result say it again, for whoever shows results
    return dataclasses.replace(await _stage_dir(spec, staging, cache), notes=(why,))


async def _stage_dir(spec: JobSpec, staging: Path, cache: HashCache) -> StagedInputs:
    """Directory mode: the scene and its dependency tree, staged by BAT (missing files refused here).
    Files from outside the scene's folder travel too (under _outside_project/); the user is told."""
    tree = await asyncio.to_thread(stage_tree, Path(spec.scene), staging / "tree")
    for name in tree.files:
        store.check_relative(name)

    def digests() -> dict[str, str]:
        return {name: tree.digest(path, cache.digest, sha256_file) for name, path in tree.files.items()}

    entries = await asyncio.to_thread(digests)
    sources: dict[str, Path | None] = {entries[name]: path for name, path in tree.files.items()}
    return StagedInputs(entries, sources, frozenset(tree.copies), tuple(tree.outside))


async def _stage(spec: JobSpec, staging: Path, cache: HashCache, reuse: bool = True) -> StagedInputs:
    progress.report("packing" if spec.pack == "packed" else "collecting dependencies")
    if spec.pack == "dir":
        return await _stage_dir(spec, staging, cache)
    return await _stage_packed(spec, staging, cache, reuse)


def _job_files(spec: JobSpec, preset: Preset, paths: JobPaths) -> dict[str, str]:
    """The job's own files by their path on the cluster, round 0's scripts among them."""
    kit = kit_for(preset, paths)
    return {paths.frames_file: frames_file_text(spec.tasks), paths.job_json: _job_json(spec, kit),
            paths.script: job_script(spec, preset, paths, kit=kit),
            rounds.finish_file(paths, 0): finish_script(spec, preset, paths, Round(0, len(spec.tasks)), kit=kit)}


def _report(staged: StagedInputs, sent: Collection[str]) -> UploadReport:
    sizes = staged.sizes
    return UploadReport(sum(sizes[d] for d in sent), len(sent), len(staged.entries) - len(sent),
                        staged.outside, staged.notes)


@dataclass(frozen=True)
class Delivered:
    """What a delivery did: the job's paths and upload cost, and the round's submissions when it made them."""

    prepared: PreparedJob
    id_tasks: dict[str, int]
    finish_id: str = ""


async def _deliver(spec: JobSpec, preset: Preset, transport: Transport, paths: JobPaths,
                   round_: Round | None) -> Delivered:
    """Pack (or stage) locally first, so missing files are refused before anything is sent; then send
    what the cluster's store lacks, write the job's files and, with `round_`, submit it. In one
    conversation with the cluster's submission helper where the site can run it, else step by step."""
    with tempfile.TemporaryDirectory(prefix="braas-hpc-") as temp, HashCache() as cache:
        staged = await _stage(spec, Path(temp), cache)
        files = _job_files(spec, preset, paths)
        while True:  # each way out of the loop below happens at most once
            try:
                if conversing(preset):
                    delivered = await _deliver_conversing(transport, preset, paths, staged, files, round_, cache)
                else:
                    delivered = await _deliver_stepwise(transport, preset, paths, staged, files, round_)
                break
            except HelperUnavailable as exc:
                log.info("%s; submitting step by step", exc)
                _STEPWISE.add(preset.name)
            except MissingFromStore:
                if all(source is not None for source in staged.sources.values()):
                    raise
                log.info("the cluster's store no longer holds the scene packed last time: packing it again")
                staged = await _stage(spec, Path(temp), cache, reuse=False)
        if staged.pack_key:
            cache.remember_packed(staged.pack_key, staged.entries[MAIN_BLEND])
    return delivered


_STEPWISE: set[str] = set()  # presets whose login node cannot run the helper (this process)


def conversing(preset: Preset) -> bool:
    """Whether submissions to the preset go in one conversation: not on this computer (nothing to save)
    nor with a site's own scripts from git (the helper is among the package's)."""
    return not preset.is_local and not preset.scripts_git and preset.name not in _STEPWISE


def _scripts_place(preset: Preset, root: str) -> str:
    return f"{preset.user}@{preset.host}:{preset.port}{root}"


async def _deliver_conversing(transport: Transport, preset: Preset, paths: JobPaths, staged: StagedInputs,
                              files: dict[str, str], round_: Round | None, cache: HashCache) -> Delivered:
    scheduler = scheduler_for(preset.scheduler)
    link_argv, link_lines = store.link_command(paths.root, paths.in_dir, staged.entries, staged.copies)
    steps: list[dict[str, object]] = [{"run": link_argv, "stdin": link_lines, "ok": [0]},
                                      {"write": sorted(files.items())}]
    submissions = rounds.array_submissions(scheduler, preset, paths, round_) if round_ else []
    if round_ is not None:
        steps.append({"submit": _submit_step(scheduler, paths, round_, [argv for argv, _ in submissions])})
    outcome, scripts = await _converse(transport, preset, paths, [paths.in_dir, paths.out_dir, paths.log_dir,
                                                                  paths.status_dir], staged, steps, cache)
    if outcome.stopped == 0:
        store.check_linked(paths.root, submit_exchange.step_result(outcome, 0, link_argv))
    prepared = PreparedJob(paths.root, paths.name, _report(staged, outcome.store_sent), scripts)
    if round_ is None:
        return Delivered(prepared, {})
    id_tasks, finish_id = _submitted(scheduler, outcome.results[2] if len(outcome.results) > 2 else {}, submissions,
                                     paths)
    return Delivered(prepared, id_tasks, finish_id)


async def _converse(transport: Transport, preset: Preset, paths: JobPaths, dirs: list[str], staged: StagedInputs,
                    steps: list[dict[str, object]], cache: HashCache) -> tuple[submit_exchange.Outcome, ScriptsReport]:
    """One conversation with the cluster's submission helper; the scripts are checked (and repaired) in it."""
    place = _scripts_place(preset, paths.root)
    offer = submit_exchange.Offer(staged.sources, staged.sizes, submit_exchange.scripts_dir(paths.root))
    outcome = await submit_exchange.converse(transport, paths.root, dirs, offer, steps,
                                             installed=cache.scripts_seen(place) == scripts_version())
    cache.remember_scripts(place, scripts_version())
    return outcome, ScriptsReport(submit_exchange.scripts_dir(paths.root), scripts_version(), outcome.scripts_sent)


def _submit_step(scheduler: Scheduler, paths: JobPaths, round_: Round, arrays: list[list[str]]) -> dict[str, object]:
    """The helper's submit step: the guarded arrays, then the finish step naming their ids (@ID0@...)."""
    marks = [f"@ID{i}@" for i in range(len(arrays))]
    return {"id": scheduler.submit_id, "arrays": arrays,
            "finish": rounds.finish_choices(scheduler, paths, round_, marks),
            "note": rounds.finish_note(paths, round_.number, "@FINISH@")}


def _submitted(scheduler: Scheduler, result: dict, submissions: list[tuple[list[str], int]], paths: JobPaths
               ) -> tuple[dict[str, int], str]:
    """The scheduler ids from the helper's submit step, read as the step-by-step way reads them (a failed
    submission raises the same errors)."""
    answers = result.get("arrays", [])
    id_tasks = {}
    for index, (argv, tasks) in enumerate(submissions):
        answer = answers[index] if index < len(answers) else {"status": None, "stderr": "not submitted"}
        done = CommandResult(tuple(argv), answer.get("status"), answer.get("stdout", ""), answer.get("stderr", ""))
        id_tasks[scheduler.parse_submit(done.check().stdout)] = tasks
    finish = result.get("finish")
    if not finish:
        why = "; ".join(str(e.get("stderr", "")).strip()[-300:] for e in result.get("finish_errors", []))
        log.warning("the finish step of %s was not submitted: %s", paths.name, why)
        return id_tasks, ""
    return id_tasks, scheduler.parse_submit(finish.get("stdout", ""))


async def _deliver_stepwise(transport: Transport, preset: Preset, paths: JobPaths, staged: StagedInputs,
                            files: dict[str, str], round_: Round | None) -> Delivered:
    """The same delivery one remote command at a time: the root checked, the scripts checked (installed
    or repaired when they differ), the inputs through the store, the job's files, the submissions."""
    await ensure_root(transport, paths.root, [paths.in_dir, paths.out_dir, paths.log_dir, paths.status_dir])
    scripts = await scripts_for(transport, preset, paths.root, update=False)
    report = await store.upload_digested(transport, paths.root, paths.in_dir, staged.entries, staged.sources,
                                         staged.copies)
    report = dataclasses.replace(report, outside_project=staged.outside, notes=staged.notes)
    await _put_texts(transport, files)
    prepared = PreparedJob(paths.root, paths.name, report, scripts)
    if round_ is None:
        return Delivered(prepared, {})
    scheduler = scheduler_for(preset.scheduler)
    id_tasks = await _submit_round(transport, scheduler, preset, paths, round_)
    finish_id = await _submit_finish(transport, scheduler, paths, round_, list(id_tasks))
    return Delivered(prepared, id_tasks, finish_id)


async def _put_texts(transport: Transport, files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="braas-hpc-") as temp:
        for index, (target, text) in enumerate(files.items()):
            (Path(temp) / str(index)).write_text(text)
            await transport.put(Path(temp) / str(index), target)


async def prepare_job(spec: JobSpec, preset: Preset, transport: Transport) -> PreparedJob:
    """Send the job's inputs and write its files, without submitting. Returns the paths and the upload's cost."""
    return (await _deliver(spec, preset, transport, JobPaths(remote_root(preset), spec.name), None)).prepared


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
    round_ = Round(0, len(spec.tasks))
    delivered = await _deliver(spec, preset, transport, JobPaths(remote_root(preset), spec.name), round_)
    paths, id_tasks = delivered.prepared, delivered.id_tasks
    if not registry.has_job(spec.name):
        registry.add_job(spec, paths.root, id_tasks, PENDING)
    intents.forget(print_)
    updated = paths.scripts.uploaded if paths.scripts else ()
    return SubmitResult(spec.name, preset.name, format_frames(spec.frames), len(spec.tasks), tuple(id_tasks),
                        paths.job_dir, paths.upload, delivered.finish_id, updated, warnings)


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
    spec, paths = record.spec, job.paths
    number = record.rounds + 1
    tasks = tuple(tuple(t) for t in chunk_frames(sorted(missing), chunk or spec.chunk))
    round_ = Round(number, len(tasks), exclude_nodes)
    files = rounds.round_files(spec, kit_for(preset, paths), paths, round_, tasks, scheduler)
    # Once the files are complete, the claim is marked ready: anyone may then submit them.
    files[f"{paths.job_dir}/submitted/r{number}.claim/ready"] = json.dumps(exclude_nodes)
    resubmit_ = _resubmit_conversing if conversing(preset) else _resubmit_stepwise
    try:
        id_tasks, finish_id, scripts = await resubmit_(job, round_, files)
    except HelperUnavailable as exc:
        log.info("%s; resubmitting step by step", exc)
        _STEPWISE.add(preset.name)
        id_tasks, finish_id, scripts = await _resubmit_stepwise(job, round_, files)
    except _Taken as taken:  # the cluster's own recovery took this round: take it as it is
        return await _adopt_round(job, number, taken.scripts)
    registry.add_round(name, id_tasks, PENDING)
    return SubmitResult(name, preset.name, format_frames(missing), len(tasks), tuple(id_tasks), paths.job_dir,
                        finish_id=finish_id, scripts_updated=scripts.uploaded)


class _Taken(Exception):
    """The round was claimed by the cluster's own recovery."""

    def __init__(self, scripts: ScriptsReport) -> None:
        super().__init__("claimed by the cluster")
        self.scripts = scripts


async def _resubmit_stepwise(job: JobContext, round_: Round, files: dict[str, str]
                             ) -> tuple[dict[str, int], str, ScriptsReport]:
    paths, transport, scheduler = job.paths, job.transport, job.scheduler
    await ensure_root(transport, paths.root)
    scripts = await scripts_for(transport, job.preset, paths.root, update=False)
    claim = await transport.run(rounds.claim_argv(paths, round_.number), check=False)
    if claim.exit_status != 0:
        raise _Taken(scripts)
    await _put_texts(transport, files)
    id_tasks = await _submit_round(transport, scheduler, job.preset, paths, round_)
    finish_id = await _submit_finish(transport, scheduler, paths, round_, list(id_tasks))
    return id_tasks, finish_id, scripts


async def _resubmit_conversing(job: JobContext, round_: Round, files: dict[str, str]
                               ) -> tuple[dict[str, int], str, ScriptsReport]:
    """The claim, the round's files, its submissions and finish step: one conversation."""
    paths, preset, scheduler = job.paths, job.preset, job.scheduler
    submissions = rounds.array_submissions(scheduler, preset, paths, round_)
    steps: list[dict[str, object]] = [
        {"run": rounds.claim_argv(paths, round_.number), "ok": [0]}, {"write": list(files.items())},
        {"submit": _submit_step(scheduler, paths, round_, [argv for argv, _ in submissions])}]
    with HashCache() as cache:
        outcome, scripts = await _converse(job.transport, preset, paths, [], StagedInputs({}, {}), steps, cache)
    if outcome.stopped == 0:
        raise _Taken(scripts)
    id_tasks, finish_id = _submitted(scheduler, outcome.results[2] if len(outcome.results) > 2 else {}, submissions,
                                     paths)
    return id_tasks, finish_id, scripts


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
