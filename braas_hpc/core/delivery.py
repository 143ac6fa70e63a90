"""Getting a job onto the cluster: its inputs staged and hashed here, what the cluster's store lacks
sent, its files written, its round submitted with the finish step after it. In one conversation with
the cluster's submission helper (core.submit_exchange) where the site can run it, else one remote
command at a time; a resubmitted round the same way."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from . import progress, rounds, store, submit_exchange
from .context import JobContext
from .errors import ConnectionLost, RemoteCommandError, SchedulerError
from .job_files import job_files
from .jobs import JobPaths, JobSpec
from .packing import MAIN_BLEND, CannotPack, UnreadableBlend, check_missing, pack_key, pack_scene, stage_tree
from .paths import data_dir, private_dir
from .presets import Preset
from .schedulers import Scheduler, scheduler_for
from .schedulers.base import Round
from .scripts import ScriptsReport, scripts_for, scripts_place, scripts_version
from .store import HashCache, MissingFromStore, UploadReport
from .submit_exchange import HelperUnavailable
from .transport import CommandResult, Transport
from .transport.base import TRANSFER_ATTEMPTS, sha256_file
from .tree import ensure_root, remote_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedJob(JobPaths):
    """A job's paths plus what its upload cost (a JobPaths, so callers that only need paths are unchanged)."""

    upload: UploadReport = UploadReport()
    scripts: ScriptsReport | None = None


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
    if key and reuse and (waiting := await asyncio.to_thread(_pending_pack, key)):
        # Packed by a try that did not deliver it (interrupted, cut): the same bytes, so the cluster
        # resumes the part it kept instead of receiving a new pack whole.
        digest, path = waiting
        return StagedInputs({MAIN_BLEND: digest}, {digest: path}, pack_key=key)
    # With a key, packed where it waits until delivered (no copy of a large pack from a temp disk after).
    work = await asyncio.to_thread(_pending_work) if key else staging / "packed"
    packed = work / MAIN_BLEND
    try:
        await pack_scene(scene, packed)
    except CannotPack as exc:
        why = f"{exc}: it was sent as a folder with its files instead (as with --pack dir)"
        if key:
            cache.remember_unpackable(key, why)
        return await _stage_as_folder(spec, staging, cache, why)
    finally:
        if key and not packed.is_file():
            shutil.rmtree(work, ignore_errors=True)
    digest = await asyncio.to_thread(sha256_file, packed)
    if key:
        waiting_path = work.parent / f"{key}-{digest[:16]}.blend"
        os.replace(packed, waiting_path)
        shutil.rmtree(work, ignore_errors=True)
        packed = waiting_path
    return StagedInputs({MAIN_BLEND: digest}, {digest: packed}, pack_key=key)


PENDING_PACK_DAYS = 7  # a pack no try delivered in this long is removed (the scene has surely changed)


def _pending_dir() -> Path:
    """Where packed copies wait until a submission delivers them: this user's data directory, private."""
    return private_dir(data_dir() / "pending-packs")


def _pending_pack(key: str) -> tuple[str, Path] | None:
    """The newest undelivered pack of these inputs whose bytes are still what its name says."""
    for path in sorted(_pending_dir().glob(f"{key}-*.blend"), key=lambda p: p.stat().st_mtime, reverse=True):
        digest = sha256_file(path)
        if path.stem.endswith(digest[:16]):
            return digest, path
        path.unlink(missing_ok=True)  # damaged: packed again
    return None


def _pending_work() -> Path:
    """A private folder of this try's own to pack into; packs no try delivered in a week are removed."""
    directory = _pending_dir()
    cutoff = time.time() - PENDING_PACK_DAYS * 86400
    for old in [*directory.glob("*.blend"), *directory.glob(".packing-*")]:
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    return Path(tempfile.mkdtemp(prefix=".packing-", dir=directory))


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


def _report(staged: StagedInputs, sent: Collection[str], sent_bytes: int | None = None) -> UploadReport:
    """`sent_bytes`: what actually travelled, when files were resumed (else their whole sizes)."""
    sizes = staged.sizes
    sent_bytes = sum(sizes[d] for d in sent) if sent_bytes is None else sent_bytes
    return UploadReport(sent_bytes, len(sent), len(staged.entries) - len(sent), staged.outside, staged.notes)


@dataclass(frozen=True)
class Delivered:
    """What a delivery did: the job's paths and upload cost, and the round's submissions when it made them."""

    prepared: PreparedJob
    id_tasks: dict[str, int]
    finish_id: str = ""


async def deliver(spec: JobSpec, preset: Preset, transport: Transport, paths: JobPaths,
                   round_: Round | None, estimate: dict | None = None) -> Delivered:
    """Pack (or stage) locally first, so missing files are refused before anything is sent; then send
    what the cluster's store lacks, write the job's files and, with `round_`, submit it. In one
    conversation with the cluster's submission helper where the site can run it, else step by step."""
    with tempfile.TemporaryDirectory(prefix="braas-hpc-") as temp, HashCache() as cache:
        staged = await _stage(spec, Path(temp), cache)
        files = job_files(spec, preset, paths, estimate)
        try:
            while True:  # each way out of the loop below happens at most once
                try:
                    if conversing(preset):
                        delivered = await _deliver_conversing(transport, preset, paths, staged, files, round_,
                                                              cache)
                    else:
                        delivered = await _deliver_stepwise(transport, preset, paths, staged, files, round_, cache)
                    break
                except HelperUnavailable as exc:
                    log.info("%s; submitting step by step", exc)
                    _STEPWISE.add(preset.name)
                except MissingFromStore:
                    if all(source is not None for source in staged.sources.values()):
                        raise
                    log.info("the cluster's store no longer holds the scene packed last time: packing it again")
                    staged = await _stage(spec, Path(temp), cache, reuse=False)
        finally:
            _drop_delivered_pack(staged, cache)
    return delivered


def _store_holds_inputs(staged: StagedInputs, cache: HashCache) -> None:
    """The cluster's store holds every input now, whatever becomes of the submission: the packed scene
    is remembered, so the next submission of the same inputs sends nothing (and its waiting copy goes)."""
    if staged.pack_key:
        cache.remember_packed(staged.pack_key, staged.entries[MAIN_BLEND])


def _drop_delivered_pack(staged: StagedInputs, cache: HashCache) -> None:
    """The waiting packed copy, once the cluster's store holds it: a refused job keeps no copy here."""
    if not staged.pack_key or cache.packed(staged.pack_key) != staged.entries[MAIN_BLEND]:
        return
    source = staged.sources.get(staged.entries[MAIN_BLEND])
    if source is not None and source.parent == _pending_dir():
        source.unlink(missing_ok=True)


_STEPWISE: set[str] = set()  # presets whose login node cannot run the helper (this process)


def conversing(preset: Preset) -> bool:
    """Whether submissions to the preset go in one conversation: not on this computer (nothing to save),
    nor with a site's own scripts from git (the helper is among the package's), nor where the preset's
    `login_python` is empty or this process found that the login node cannot run the helper."""
    return (not preset.is_local and not preset.scripts_git and bool(preset.login_python)
            and preset.name not in _STEPWISE)


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
    _store_holds_inputs(staged, cache)  # even when a step below refused the job
    if outcome.stopped == 0:
        store.check_linked(paths.root, submit_exchange.step_result(outcome, 0, link_argv))
    prepared = PreparedJob(paths.root, paths.name, _report(staged, outcome.store_sent, outcome.store_bytes), scripts)
    if round_ is None:
        return Delivered(prepared, {})
    id_tasks, finish_id = _submitted(scheduler, outcome.results[2] if len(outcome.results) > 2 else {}, submissions,
                                     paths)
    return Delivered(prepared, id_tasks, finish_id)


async def _converse(transport: Transport, preset: Preset, paths: JobPaths, dirs: list[str], staged: StagedInputs,
                    steps: list[dict[str, object]], cache: HashCache) -> tuple[submit_exchange.Outcome, ScriptsReport]:
    """One conversation with the cluster's submission helper; the scripts are checked (and repaired) in it."""
    place = scripts_place(preset, paths.root)
    offer = submit_exchange.Offer(staged.sources, staged.sizes, submit_exchange.scripts_dir(paths.root))
    for attempt in range(TRANSFER_ATTEMPTS):
        # A dropped connection is tried again: every step is safe to repeat (guarded submissions answer
        # from their records), and the cluster kept what arrived of a file, so only the rest goes.
        try:
            outcome = await submit_exchange.converse(transport, paths.root, dirs, offer, steps, preset.login_python,
                                                     installed=cache.scripts_seen(place) == scripts_version())
            break
        except (ConnectionLost, submit_exchange.SentFileChanged) as exc:
            if attempt == TRANSFER_ATTEMPTS - 1 or isinstance(exc, submit_exchange.SentFileChanged) and attempt:
                raise
            log.info("%s; trying again", exc)
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
                            files: dict[str, str], round_: Round | None, cache: HashCache) -> Delivered:
    """The same delivery one remote command at a time: the root checked, the scripts checked (installed
    or repaired when they differ), the inputs through the store, the job's files, the submissions."""
    await ensure_root(transport, paths.root, [paths.in_dir, paths.out_dir, paths.log_dir, paths.status_dir])
    scripts = await scripts_for(transport, preset, paths.root, update=False)
    report = await store.upload_digested(transport, paths.root, paths.in_dir, staged.entries, staged.sources,
                                         staged.copies)
    _store_holds_inputs(staged, cache)
    report = dataclasses.replace(report, outside_project=staged.outside, notes=staged.notes)
    await _put_texts(transport, files)
    prepared = PreparedJob(paths.root, paths.name, report, scripts)
    if round_ is None:
        return Delivered(prepared, {})
    scheduler = scheduler_for(preset.scheduler)
    id_tasks = await submit_round(transport, scheduler, preset, paths, round_)
    finish_id = await submit_finish(transport, scheduler, paths, round_, list(id_tasks))
    return Delivered(prepared, id_tasks, finish_id)


async def _put_texts(transport: Transport, files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="braas-hpc-") as temp:
        for index, (target, text) in enumerate(files.items()):
            (Path(temp) / str(index)).write_text(text)
            await transport.put(Path(temp) / str(index), target)


async def prepare_job(spec: JobSpec, preset: Preset, transport: Transport) -> PreparedJob:
    """Send the job's inputs and write its files, without submitting. Returns the paths and the upload's cost."""
    return (await deliver(spec, preset, transport, JobPaths(remote_root(preset), spec.name), None)).prepared


async def submit_finish(transport: Transport, scheduler: Scheduler, paths: JobPaths, round_: Round,
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


async def submit_round(transport: Transport, scheduler: Scheduler, preset: Preset, paths: JobPaths, round_: Round
                        ) -> dict[str, int]:
    """One array submission, or one job per task on a site without arrays; each made at most once
    (a record beside the script answers a repeated one). Returns each scheduler id's number of tasks."""
    id_tasks = {}
    for argv, tasks in rounds.array_submissions(scheduler, preset, paths, round_):
        id_tasks[scheduler.parse_submit((await transport.run(argv)).stdout)] = tasks
    return id_tasks


class RoundTaken(Exception):
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
        raise RoundTaken(scripts)
    await _put_texts(transport, files)
    id_tasks = await submit_round(transport, scheduler, job.preset, paths, round_)
    finish_id = await submit_finish(transport, scheduler, paths, round_, list(id_tasks))
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
        raise RoundTaken(scripts)
    id_tasks, finish_id = _submitted(scheduler, outcome.results[2] if len(outcome.results) > 2 else {}, submissions,
                                     paths)
    return id_tasks, finish_id, scripts


async def submit_next_round(job: JobContext, round_: Round, files: dict[str, str]
                            ) -> tuple[dict[str, int], str, ScriptsReport]:
    """Claim round `round_` of the job, write its `files` and submit it with its finish step. Returns each
    scheduler id's number of tasks, the finish step's id and the scripts report; raises RoundTaken when the
    cluster's own recovery claimed the round first."""
    if conversing(job.preset):
        try:
            return await _resubmit_conversing(job, round_, files)
        except HelperUnavailable as exc:
            log.info("%s; resubmitting step by step", exc)
            _STEPWISE.add(job.preset.name)
    return await _resubmit_stepwise(job, round_, files)
