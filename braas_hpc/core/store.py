"""Content-addressed upload over plain SSH: the cluster keeps every uploaded file once, by SHA-256.

`<root>/store/<sha256[:2]>/<sha256>` holds the files (read-only, shared by all jobs); a job's `in/`
holds links into it. A submission costs a constant number of remote commands, whatever the number of
files: one to ask which hashes the store lacks, one `mkdir -p`, the uploads of what is new (a few at
once), one `chmod`, one to build `in/`. Lists travel on stdin to fixed scripts, never in the command
line, so neither quoting nor the kernel's limit on one argument (128 KiB) can bite with many files.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import secrets
import shlex
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import progress
from .errors import BraasError, ConnectionLost, TransferError, UsageError
from .jobs import SHA256_HEX, store_dir, store_path
from .paths import data_dir
from .transport import CommandResult, Transport
from .transport.base import sha256_file
from .tree import UntrustedTree

UPLOADS_AT_ONCE = 4
HASH_CACHE_FILE = "hash-cache.sqlite"

# stdin: one digest per line; prints the ones the store does not hold. `${h%"${h#??}"}` is the first
# two characters without starting a process per file.
_LACKS_SCRIPT = ('s="$1"; while IFS= read -r h; do [ -f "$s/${h%"${h#??}"}/$h" ] || printf "%s\\n" "$h"; done; '
                 'exit 0')

# stdin: "<digest>\t<how>\t<path inside in/>" per line, how = L (link) or C (a private writable copy).
# Hard links first (the store's link count then says which files a job uses); a symbolic link when `ln`
# cannot (another filesystem, no hard links). A digest missing from the store stops the script: a
# dangling link would only fail later, on a node. Each store file is checked before a job gets it: a
# regular file (not a link), the user's own, and its bytes have the SHA-256 its name says; any other
# stops the script with exit 4 and says which (nothing of it reaches the job).
_LINK_SCRIPT = '''in="$1"; s="$2"; mkdir -p -- "$in" || exit 1
while IFS="	" read -r h how rel; do
  src="$s/${h%"${h#??}"}/$h"; dst="$in/$rel"
  if [ -L "$src" ]; then echo "store file $src is a symbolic link" >&2; exit 4; fi
  [ -f "$src" ] || { echo "store file missing: $h" >&2; exit 3; }
  [ -O "$src" ] || { echo "store file $src is owned by $(stat -c %U -- "$src"), not by you" >&2; exit 4; }
  got=$(sha256sum -- "$src" | cut -d " " -f 1)
  [ "$got" = "$h" ] || { echo "store file $src holds other bytes than its name says (SHA-256 $got)" >&2; exit 4; }
  case "$rel" in */*) mkdir -p -- "${dst%/*}" || exit 1;; esac
  if [ "$how" = C ]; then rm -f -- "$dst"; cp -- "$src" "$dst" && chmod u+w -- "$dst" || exit 1; continue; fi
  ln -f -- "$src" "$dst" 2>/dev/null || ln -sf -- "$src" "$dst" || exit 1
done'''
UNTRUSTED_STORE_FILE = 4  # the link script's exit status for a store file that failed its check

# Store files no hard link references (link count 1), and the targets of symbolic links in jobs/ and
# interactive/ (sessions' scenes), whose referenced store files also have link count 1. Names in the
# store are hex digests.
_UNREFERENCED_SCRIPT = '''r="$1"
for d in "$r/jobs" "$r/interactive"; do [ -d "$d" ] && find "$d" -mindepth 3 -type l -printf 'L\\t%l\\n'; done
[ -d "$r/store" ] && find "$r/store" -mindepth 2 -maxdepth 2 -type f -links 1 ! -name '.*' -printf 'F\\t%s\\t%f\\n'
[ -d "$r/store" ] && find "$r/store" -mindepth 2 -maxdepth 2 -type f \\( -name '*.part' -o -name '*.braas-part' \\) \\
  -mmin +"$2" -printf 'T\\t%s\\t%f\\n'
exit 0'''

# Temp files of uploads that never finished: the store's own (<digest>.<hex>.part) and put()'s resumable
# one (.<digest>.braas-part). Only this old: a younger one may belong to an upload still running.
ABANDONED_AFTER_MIN = 24 * 60
_TEMP_NAME = re.compile(r"^(?:[0-9a-f]{64}\.[0-9a-f]+\.part|\.[0-9a-f]{64}\.braas-part)\Z")
# stdin: temp file names; each goes only if it is still that old at that moment.
_REMOVE_TEMPS_SCRIPT = '''s="$1"; while IFS= read -r n; do h="${n#.}"
  find "$s/${h%"${h#??}"}" -maxdepth 1 -type f -name "$n" -mmin +"$2" -delete 2>/dev/null; done; exit 0'''

# stdin: digests to remove; each is removed only if still unreferenced by hard links at that moment.
_REMOVE_SCRIPT = '''s="$1"; while IFS= read -r h; do f="$s/${h%"${h#??}"}/$h"
  [ -f "$f" ] && [ "$(stat -c %h -- "$f")" = 1 ] && rm -f -- "$f"; done; exit 0'''


class HashCache:
    """SHA-256 of local files, remembered by (absolute path, size, mtime_ns) so unchanged files are
    read once; and which packed .blend a set of inputs produced (packing is not byte-reproducible)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or data_dir() / HASH_CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():  # it holds the user's local paths: 0600, not the umask's mode
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        # Used from worker threads (asyncio.to_thread), one call at a time.
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                         "mtime_ns INTEGER, sha256 TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS packs (key TEXT PRIMARY KEY, sha256 TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS unpackable (key TEXT PRIMARY KEY, why TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS scripts (place TEXT PRIMARY KEY, version TEXT)")
        self.hashed = 0  # files read in full by this instance (tests check the cache with it)

    def digest(self, path: Path) -> str:
        absolute = str(path.resolve())
        stat = os.stat(absolute)
        row = self._db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (absolute,)).fetchone()
        if row and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
            return str(row[2])
        value = sha256_file(Path(absolute))
        self.hashed += 1
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                             (absolute, stat.st_size, stat.st_mtime_ns, value))
        return value

    def packed(self, key: str) -> str | None:
        row = self._db.execute("SELECT sha256 FROM packs WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def remember_packed(self, key: str, digest: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO packs VALUES (?, ?)", (key, digest))

    def scripts_seen(self, where: str) -> str | None:
        """The cluster scripts' version last seen installed at `where` (a host and root)."""
        row = self._db.execute("SELECT version FROM scripts WHERE place = ?", (where,)).fetchone()
        return str(row[0]) if row else None

    def remember_scripts(self, where: str, version: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO scripts VALUES (?, ?)", (where, version))

    def unpackable(self, key: str) -> str | None:
        """Why the scene with this pack key cannot be packed (it goes as a folder), or None."""
        row = self._db.execute("SELECT why FROM unpackable WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def remember_unpackable(self, key: str, why: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO unpackable VALUES (?, ?)", (key, why))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class UploadReport:
    uploaded_bytes: int = 0
    uploaded_files: int = 0
    skipped_files: int = 0  # inputs the store already held
    outside_project: tuple[str, ...] = ()  # dependencies from outside the scene's folder (dir mode)
    notes: tuple[str, ...] = ()  # what the user should know about how the inputs were sent

    def to_json(self) -> dict[str, object]:
        return {"uploaded_bytes": self.uploaded_bytes, "uploaded_files": self.uploaded_files,
                "skipped_files": self.skipped_files, "outside_project": list(self.outside_project),
                "notes": list(self.notes)}


def check_relative(name: str) -> str:
    """A path inside `in/`: relative, no `..`, and nothing the line-based remote scripts could misread."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or any(
            c in name for c in "\t\n\r\0"):
        raise UsageError(f"cannot place {name!r} in the job's input directory (unsafe path)")
    return name


async def lacking(transport: Transport, root: str, digests: Iterable[str]) -> set[str]:
    """The digests the cluster's store does not hold, in one remote command."""
    wanted = sorted(set(digests))
    if not wanted:
        return set()
    done = await transport.run(["sh", "-c", _LACKS_SCRIPT, "sh", store_dir(root)], stdin="".join(
        f"{d}\n" for d in wanted))
    return {line for line in done.stdout.split() if line in wanted}


# Reads "<sha256>\t<temp>\t<final>" lines: checks each temp file's digest, makes it read-only (a job's
# hard link is the same inode, so a job must not be able to change the store) and renames it into place;
# prints the final path of every file that did not check out (its temp file is removed).
_SETTLE_SCRIPT = r"""
while IFS="$(printf '\t')" read -r digest temp final; do
  [ -n "$final" ] || continue
  got=$( [ -f "$temp" ] && [ ! -L "$temp" ] && [ -O "$temp" ] && sha256sum -- "$temp" 2>/dev/null | cut -d ' ' -f 1)
  if [ "$got" = "$digest" ] && chmod 0444 -- "$temp" && mv -f -- "$temp" "$final"; then :; else
    rm -f -- "$temp"; printf '%s\n' "$final"
  fi
done
exit 0
"""


# $@: directories to make; stdin: temp file names, each created empty and exclusively (noclobber: a name
# that exists, a planted link included, stops the upload rather than being written through).
_CREATE_TEMPS_SCRIPT = 'set -C; mkdir -p -- "$@" || exit 1; while IFS= read -r t; do : > "$t" || exit 1; done'


async def _send(transport: Transport, root: str, files: Mapping[str, Path]) -> None:
    """Upload files (digest -> local path) into the store: the bytes a few at once, then ONE command
    that verifies every file's SHA-256 and renames it into place, so round trips do not grow with the
    number of files. A file that fails (a dropped link, a bad copy) goes again through put(), which
    resumes and verifies on its own."""
    targets = {digest: store_path(root, digest) for digest in files}
    temps = {digest: f"{target}.{secrets.token_hex(4)}.part" for digest, target in targets.items()}
    dirs = sorted({posixpath.dirname(t) for t in targets.values()})
    await transport.run(["sh", "-c", _CREATE_TEMPS_SCRIPT, "sh", *dirs], stdin="".join(f"{temps[d]}\n" for d in files))
    gate = asyncio.Semaphore(UPLOADS_AT_ONCE)
    counter = progress.ByteCounter("uploading", sum(path.stat().st_size for path in files.values()))

    async def one(digest: str) -> None:
        async with gate:
            try:
                await transport.send_exact(files[digest], temps[digest], counter.for_item(digest))
            except (ConnectionLost, TransferError):
                pass  # its temp file will not check out below: sent again then

    await asyncio.gather(*(one(d) for d in files))
    # Every file, the failed ones too: their partial temp files do not check out and are removed.
    lines = "".join(f"{d}\t{temps[d]}\t{targets[d]}\n" for d in files)
    done = await transport.run(["sh", "-c", _SETTLE_SCRIPT, "sh"], stdin=lines, timeout=1800)
    bad = set(done.stdout.split())
    failed = {d for d, target in targets.items() if target in bad}
    for digest in sorted(failed):
        await transport.put(files[digest], targets[digest], verify=True)
        await transport.run(["chmod", "0444", "--", targets[digest]])


def link_command(root: str, in_dir: str, entries: Mapping[str, str], copies: Collection[str] = ()
                 ) -> tuple[list[str], str]:
    """The command (argv, stdin) that builds `in_dir` as links into the store; see link_inputs."""
    lines = "".join(f"{digest}\t{'C' if name in copies else 'L'}\t{check_relative(name)}\n"
                    for name, digest in sorted(entries.items()))
    return ["sh", "-c", _LINK_SCRIPT, "sh", in_dir, store_dir(root)], lines


async def link_inputs(transport: Transport, root: str, in_dir: str, entries: Mapping[str, str],
                      copies: Collection[str] = ()) -> None:
    """Build `in_dir` as links into the store (path inside in/ -> digest), in one remote command.
    The names in `copies` get a private writable copy instead: files Blender opens read-write."""
    argv, lines = link_command(root, in_dir, entries, copies)
    check_linked(root, await transport.run(argv, stdin=lines, timeout=1800, check=False))


def check_linked(root: str, done: CommandResult) -> None:
    """Raise on the link command's failure; a store file that failed its check says which and what to do."""
    if done.exit_status == UNTRUSTED_STORE_FILE:
        what = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "a store file failed its check"
        named = re.match(r"store file (.+?) (?:is a symbolic|is owned|holds other)", what)
        bad = shlex.quote(named.group(1) if named else store_dir(root))
        raise UntrustedTree(f"{what}: refusing to give it to the job, so nothing was submitted. Someone or "
                            f"something changed the store; remove the file (rm -f {bad}) and submit again: "
                            "it is uploaded afresh.")
    done.check()


async def upload_inputs(transport: Transport, root: str, in_dir: str, files: Mapping[str, Path],
                        digest: Callable[[Path], str] = sha256_file, copies: Collection[str] = ()) -> UploadReport:
    """Put `files` (path inside in/ -> local file) into the job's `in/`, sending only what the store lacks.

    `digest` hashes a local file (HashCache.digest for the user's own files, which do not change between
    submissions; plain sha256_file for temporary copies)."""
    for name in files:
        check_relative(name)
    digests = {name: await asyncio.to_thread(digest, path) for name, path in files.items()}
    return await upload_digested(transport, root, in_dir, digests, {d: files[n] for n, d in digests.items()}, copies)


async def upload_digested(transport: Transport, root: str, in_dir: str, entries: Mapping[str, str],
                          sources: Mapping[str, Path | None], copies: Collection[str] = ()) -> UploadReport:
    """upload_inputs for files already hashed: `entries` (path inside in/ -> digest), `sources` (digest ->
    local file; None for one this computer remembers in the store and holds no copy of: its absence
    raises MissingFromStore)."""
    missing = await lacking(transport, root, entries.values())
    gone = sorted(d for d in missing if sources.get(d) is None)
    if gone:
        raise MissingFromStore(gone)
    by_digest = {digest: sources[digest] for digest in missing}
    if by_digest:
        await _send(transport, root, by_digest)  # type: ignore[arg-type]
    await link_inputs(transport, root, in_dir, entries, copies)
    sent = sum(path.stat().st_size for path in by_digest.values() if path is not None)
    return UploadReport(sent, len(by_digest), len(entries) - sum(1 for d in entries.values() if d in missing))


class MissingFromStore(BraasError):
    """The store lacks files this computer holds no copy of (a packed scene it remembered there)."""

    def __init__(self, digests: Sequence[str]) -> None:
        super().__init__(f"the cluster's store lacks {len(digests)} file(s) this computer has no copy of")
        self.digests = tuple(digests)


@dataclass(frozen=True)
class StoreFile:
    digest: str
    size: int


@dataclass(frozen=True)
class StoreScan:
    unreferenced: list[StoreFile]  # store files no job's in/ links to
    abandoned: list[StoreFile]  # temp files of uploads that never finished (`digest` is the file's name)


async def scan(transport: Transport, root: str) -> StoreScan:
    """What `gc` may remove, in one remote command: store files that no job's `in/` links to (neither by
    hard link nor by symbolic link), and temp files that failed uploads left behind."""
    done = await transport.run(["sh", "-c", _UNREFERENCED_SCRIPT, "sh", root, str(ABANDONED_AFTER_MIN)],
                               timeout=600)
    linked: set[str] = set()
    candidates: list[StoreFile] = []
    abandoned: list[StoreFile] = []
    for line in done.stdout.splitlines():
        kind, _, rest = line.partition("\t")
        size, _, name = rest.partition("\t")
        if kind == "L":
            linked.add(posixpath.basename(rest))
        elif kind == "F" and SHA256_HEX.match(name) and size.isdigit():
            candidates.append(StoreFile(name, int(size)))
        elif kind == "T" and _TEMP_NAME.match(name) and size.isdigit():
            abandoned.append(StoreFile(name, int(size)))
    return StoreScan(sorted((f for f in candidates if f.digest not in linked), key=lambda f: f.digest),
                     sorted(abandoned, key=lambda f: f.digest))


async def unreferenced(transport: Transport, root: str) -> list[StoreFile]:
    """Store files that no job's `in/` links to (neither by hard link nor by symbolic link)."""
    return (await scan(transport, root)).unreferenced


async def remove(transport: Transport, root: str, files: Iterable[StoreFile],
                 abandoned: Iterable[StoreFile] = ()) -> None:
    """Remove store files, each checked again for hard links just before it goes, and abandoned temp
    files, each checked again for its age."""
    digests = [f.digest for f in files if SHA256_HEX.match(f.digest)]
    if digests:
        await transport.run(["sh", "-c", _REMOVE_SCRIPT, "sh", store_dir(root)],
                            stdin="".join(f"{d}\n" for d in digests), timeout=600)
    temps = [f.digest for f in abandoned if _TEMP_NAME.match(f.digest)]
    if temps:
        await transport.run(["sh", "-c", _REMOVE_TEMPS_SCRIPT, "sh", store_dir(root), str(ABANDONED_AFTER_MIN)],
                            stdin="".join(f"{n}\n" for n in temps), timeout=600)
