"""Downloading frames: only the ones not here yet, each verified by size and SHA-256 against the
cluster, names checked before any local path is built; `follow` keeps going while the job runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import events
from .context import JobContext
from .errors import TransferError, UsageError
from .jobs import FRAME_FILE, VIDEO_FILE
from .monitor import job_status
from .paths import data_dir, private_dir, write_private
from .schedulers.base import TERMINAL
from .transport import RemoteEntry, Transport
from .transport.base import Progress, sha256_file

log = logging.getLogger(__name__)

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


def ours(name: str) -> bool:
    """A file a download brings: a frame, or the movie of the frames the finish step made."""
    return bool(FRAME_FILE.match(name) or VIDEO_FILE.match(name))


def _safe_target(dest: Path, name: str) -> Path | None:
    """A local path for a remote name, or None when the name is not one of our frame files."""
    if not ours(name):
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


PARALLEL_GETS = 4  # frames fetched at once: a far cluster's round trips overlap instead of adding up
# Back ends that fetch one frame at a time: paramiko's, fetching several at once, now and then loses its
# connection under the next command ("Unable to open channel", seen in bench/latency_bench.py).
ONE_AT_A_TIME = frozenset({"paramiko"})

# Lists out/ ($1) and hashes, in the same call, the frames the client does not hold verified already (stdin:
# "<name>\t<size>" lines). Prints "L\t<f or d>\t<size>\t<name>\0" per entry, "H\t<sha256>\t<name>\0" per
# hash. Only names of frame characters are hashed, so sha256sum prints them as they are.
_LISTING_SCRIPT = r"""
cd -- "$1" 2>/dev/null || exit 0
known=$(mktemp) || exit 1
trap 'rm -f -- "$known"' EXIT
cat > "$known"
find . -mindepth 1 -maxdepth 1 \( -type f -o -type d \) -printf 'L\t%y\t%s\t%f\0'
find . -mindepth 1 -maxdepth 1 -type f \( -name 'frame_*' -o -name 'video-*' \) ! -name '*[!A-Za-z0-9._-]*' \
  -printf '%f\t%s\n' |
  grep -vxF -f "$known" | cut -f 1 | xargs -r sha256sum -- |
  while read -r digest name; do printf 'H\t%s\t%s\0' "$digest" "$name"; done
exit 0
"""
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RemoteFrames:
    """What the cluster's out/ holds (every entry, as a listing gives it) and the SHA-256 of the frames
    the client asked to have hashed."""

    entries: list[RemoteEntry]
    digests: dict[str, str]


async def _remote_listing(transport: Transport, out_dir: str, verified: dict[str, int]) -> RemoteFrames:
    """out/'s entries and the digests of its frames but those in `verified` (name -> size held here), in
    one call. A record that does not read as one is dropped; a digest must be one."""
    known = "".join(f"{name}\t{size}\n" for name, size in verified.items())
    # Through stdin, however many frames are held (a command line has a size limit); none: no stdin at all.
    done = await transport.run(["sh", "-c", _LISTING_SCRIPT, "sh", out_dir], stdin=known or None, timeout=600)
    entries, digests = [], {}
    for record in done.stdout.split("\0"):
        kind, _, rest = record.partition("\t")
        if kind == "L":
            type_, size, name = (rest.split("\t", 2) + ["", ""])[:3]
            if type_ in ("f", "d") and size.isdigit() and name:
                entries.append(RemoteEntry(name, int(size), type_ == "d"))
        elif kind == "H":
            digest, _, name = rest.partition("\t")
            if _DIGEST.fullmatch(digest):
                digests[name] = digest
    return RemoteFrames(entries, digests)


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


class _Progress:
    """One progress for frames fetched at once: bytes done and total over all of them."""

    def __init__(self, report: Progress | None) -> None:
        self.report = report
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def of(self, name: str, size: int) -> Progress | None:
        if self.report is None:
            return None
        self.total[name] = size

        def each(done: int, total: int) -> None:
            self.done[name] = done
            self.total[name] = total
            assert self.report is not None
            self.report(sum(self.done.values()), sum(self.total.values()))
        return each


def _held(dest: Path, ledger: _Ledger) -> dict[str, int]:
    """Frames here as the ledger verified them: name -> size (the cluster need not hash them again)."""
    if not dest.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in dest.iterdir()
            if ours(p.name) and p.is_file() and not p.is_symlink() and ledger.verified(p)}


def _sort_out(remote: RemoteFrames, dest: Path, ledger: _Ledger, result: DownloadResult) -> dict[str, tuple[Path, int]]:
    """The frames to fetch (name -> local target and size); what is not a frame goes to `result.ignored`,
    what is here and verified to `result.skipped`."""
    todo: dict[str, tuple[Path, int]] = {}
    ignored = []
    for entry in sorted(remote.entries, key=lambda e: e.name):
        target = None if entry.is_dir else _safe_target(dest, entry.name)
        if target is None:
            if not entry.name.startswith("."):  # hidden names are frames still being written
                ignored.append(entry.name)
        elif target.is_file() and target.stat().st_size == entry.size and ledger.verified(target):
            result.skipped += 1
        else:
            todo[entry.name] = (target, entry.size)
    result.ignored = tuple(ignored)
    if unhashed := sorted(n for n in todo if n not in remote.digests):
        # Rewritten between the listing and its hashing (or a listing that does not add up): never fetched
        # without a hash to check it against; the next download asks again.
        log.info("download of %s: no SHA-256 for %s this time", result.job, ", ".join(unhashed))
        for frame in unhashed:
            del todo[frame]
    return todo


async def _each(frames: list[str], fetch: Callable[[str], Awaitable[None]]) -> list[Exception]:
    """Fetch the frames at once; what failed other than by its bytes or the disk (a dropped connection
    under transfers made at once) is fetched again alone, resuming its temp file. Returns the failures."""
    outcomes = await asyncio.gather(*(fetch(frame) for frame in frames), return_exceptions=True)
    if stop := next((o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, Exception)), None):
        raise stop  # cancelled: not a frame's failure
    failed: list[Exception] = [o for o in outcomes if isinstance(o, TransferError)]  # final
    for frame in [f for f, o in zip(frames, outcomes, strict=True) if isinstance(o, Exception)
                  and not isinstance(o, TransferError)]:
        try:
            await fetch(frame)
        except Exception as error:  # noqa: BLE001 - raised once the ledger keeps what was verified
            failed.append(error)
    return failed


async def download_once(job: JobContext, dest: Path, progress: Progress | None = None) -> DownloadResult:
    """One call lists out/ and hashes the frames not verified here yet; the new frames are then fetched
    at once, each checked against its hash. A frame that fails does not stop the others."""
    make_dest(dest)
    paths, transport = job.paths, job.transport
    result, ledger = DownloadResult(job.name, dest), _Ledger(job.name, dest)
    remote = await _remote_listing(transport, paths.out_dir, _held(dest, ledger))
    todo = _sort_out(remote, dest, ledger, result)
    bytes_done = _Progress(progress)
    limit = asyncio.Semaphore(1 if transport.name in ONE_AT_A_TIME else PARALLEL_GETS)

    async def settle(frame: str, replaced: bool) -> None:
        """The frame's bytes are here: checked against the cluster's hash, then recorded."""
        target = todo[frame][0]
        digest = remote.digests[frame]
        if await asyncio.to_thread(sha256_file, target) != digest:
            target.unlink()
            raise TransferError(f"{target.name} does not match the cluster's copy (SHA-256); removed it, "
                                "run again")
        ledger.record(target, digest)
        result.downloaded += 1
        if replaced:
            result.refetched.append(target.name)

    async def fetch(frame: str) -> None:
        target, size = todo[frame]
        digest = remote.digests[frame]
        async with limit:
            here = await asyncio.to_thread(sha256_file, target) if target.is_file() else None
            if here == digest:
                ledger.record(target, here)  # already right (fetched before the ledger existed)
                result.skipped += 1
                return
            replaced = target.is_file()
            await transport.get(f"{paths.out_dir}/{frame}", target, bytes_done.of(frame, size))
            await settle(frame, replaced)

    # New frames come in one stream where the back end keeps a shell (one round trip); the others (a frame
    # here to compare, a cut stream, no kept shell) one by one as before.
    new = {f"{paths.out_dir}/{frame}": frame for frame, (target, _) in todo.items()
           if not os.path.lexists(target)}
    streamed = await transport.get_batch([(path, todo[frame][0]) for path, frame in new.items()],
                                         lambda path: bytes_done.of(new[path], todo[new[path]][1])) if new else set()
    failed: list[Exception] = []
    for path in sorted(streamed):
        try:
            await settle(new[path], False)
        except TransferError as error:
            failed.append(error)
    failed += await _each([frame for frame in todo if f"{paths.out_dir}/{frame}" not in streamed], fetch)
    ledger.save()
    result.refetched.sort()
    if failed:
        raise failed[0]
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
