"""Downloading frames: only the ones not here yet, each verified by size and SHA-256 against the
cluster, names checked before any local path is built; `follow` keeps going while the job runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import events
from .context import JobContext
from .errors import TransferError, UsageError
from .jobs import FRAME_FILE
from .monitor import job_status
from .paths import data_dir, private_dir, write_private
from .schedulers.base import TERMINAL
from .transport import Transport
from .transport.base import Progress, sha256_file

# What was verified, per job and destination, kept in our data directory (not among the user's frames):
# name -> [size, mtime_ns, sha256]. A file that changed since is verified again, so a frame damaged on
# this side is fetched anew.
FOLLOW_POLL_MAX_S = 30.0


@dataclass
class DownloadResult:
    job: str
    dest: Path
    downloaded: int = 0
    skipped: int = 0
    ignored: tuple[str, ...] = ()  # remote names that are not frame files, never written locally
    refetched: list[str] = field(default_factory=list)  # local copies that did not match the cluster's

    def to_json(self) -> dict[str, object]:
        return {"job": self.job, "dest": str(self.dest), "downloaded": self.downloaded, "skipped": self.skipped,
                "ignored": list(self.ignored), "refetched": self.refetched}


def _safe_target(dest: Path, name: str) -> Path | None:
    """A local path for a remote name, or None when the name is not one of our frame files."""
    if not FRAME_FILE.match(name):
        return None
    # A frame name has no '/' and no '..', so this is directly in dest. A link there (to outside, or to
    # another frame) is never written through: the name is left alone and reported as ignored.
    target = dest.resolve() / name
    return None if target.is_symlink() else target


def ledger_path(job: str, dest: Path) -> Path:
    key = hashlib.sha256(str(dest.resolve()).encode()).hexdigest()[:16]
    return data_dir() / "downloads" / f"{job}-{key}.json"


class _Ledger:
    def __init__(self, job: str, dest: Path) -> None:
        self.path = ledger_path(job, dest)
        try:
            self.items: dict[str, list[object]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.items = {}

    def verified(self, target: Path) -> bool:
        stat = target.stat() if target.is_file() else None
        known = self.items.get(target.name)
        return bool(stat and known and known[:2] == [stat.st_size, stat.st_mtime_ns])

    def record(self, target: Path, digest: str) -> None:
        stat = target.stat()
        self.items[target.name] = [stat.st_size, stat.st_mtime_ns, digest]

    def save(self) -> None:
        private_dir(self.path.parent)
        temp = self.path.with_name(f"{self.path.name}.part")
        write_private(temp, json.dumps(self.items))
        os.replace(temp, self.path)


async def _remote_digests(transport: Transport, paths: list[str]) -> dict[str, str]:
    """SHA-256 of many remote files in one call."""
    if not paths:
        return {}
    done = await transport.run(["sha256sum", "--", *paths], timeout=600)
    digests = {}
    for line in done.stdout.splitlines():
        digest, _, path = line.partition("  ")
        digests[path] = digest
    return digests


def check_dest(dest: Path) -> None:
    """Refuse, before anything is rendered or fetched, a destination no frame could be written to."""
    probe = dest
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"download destination {dest}: {probe} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"download destination {dest}: you may not write in {probe}")


def make_dest(dest: Path) -> None:
    check_dest(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # /proc, a read-only mount: what the system said, not a traceback
        raise UsageError(f"download destination {dest} cannot be made: {exc.strerror or exc}") from None


async def download_once(job: JobContext, dest: Path, progress: Progress | None = None) -> DownloadResult:
    make_dest(dest)
    name, paths, transport = job.name, job.paths, job.transport
    result, ledger, ignored = DownloadResult(name, dest), _Ledger(name, dest), []
    todo: dict[str, Path] = {}
    for entry in sorted(await transport.listdir(paths.out_dir), key=lambda e: e.name):
        target = None if entry.is_dir else _safe_target(dest, entry.name)
        if target is None:
            if not entry.name.startswith("."):  # hidden names are frames still being written
                ignored.append(entry.name)
        elif target.is_file() and target.stat().st_size == entry.size and ledger.verified(target):
            result.skipped += 1
        else:
            todo[f"{paths.out_dir}/{entry.name}"] = target
    remote = await _remote_digests(transport, list(todo))
    for source, target in todo.items():
        here = await asyncio.to_thread(sha256_file, target) if target.is_file() else None
        if here == remote[source]:
            ledger.record(target, here)  # already right (fetched before the ledger existed)
            result.skipped += 1
            continue
        if target.is_file():
            result.refetched.append(target.name)
        await transport.get(source, target, progress)
        if await asyncio.to_thread(sha256_file, target) != remote[source]:
            target.unlink()
            raise TransferError(f"{target.name} does not match the cluster's copy (SHA-256); removed it, run again")
        ledger.record(target, remote[source])
        result.downloaded += 1
    ledger.save()
    result.ignored = tuple(ignored)
    return result


async def download(job: JobContext, dest: Path, progress: Progress | None = None, *, follow: bool = False,
                   on_round: Callable[[DownloadResult], None] | None = None) -> DownloadResult:
    """Fetch the job's frames; with `follow`, keep fetching as they appear until the job has ended."""
    news = events.JobEvents()  # frames that land are fetched at once, without a status call (core.events)
    try:
        return await _download_rounds(job, dest, progress, follow, on_round, news)
    finally:
        await news.close()


async def _download_rounds(job: JobContext, dest: Path, progress: Progress | None, follow: bool,
                           on_round: Callable[[DownloadResult], None] | None, news: events.JobEvents
                           ) -> DownloadResult:
    total = DownloadResult(job.name, dest)
    interval = 2.0
    frames_only = False  # woken by frames that landed: fetched without asking the scheduler
    while True:
        ended = (await job_status(job)).state in TERMINAL if follow and not frames_only else not follow
        got = await download_once(job, dest, progress)
        total.downloaded += got.downloaded
        total.skipped = got.skipped
        total.ignored = got.ignored
        total.refetched += got.refetched
        if on_round:
            on_round(got)
        if ended:  # the frames fetched after the job ended are the last ones
            return total
        if not frames_only:
            deadline = time.monotonic() + interval
            interval = interval * 2 if got.downloaded == 0 else 2.0
            interval = min(interval, FOLLOW_POLL_MAX_S)
        frames_only = await events.pause(news, job.record, job.preset, deadline)
