"""Which Blender wrote a .blend, which Blender a command runs, and whether the one can open the other.

An older Blender opens a newer file only in part and drops what it does not know when it saves: the
packed copy (saved by the Blender on this computer) or the render (the cluster's Blender) would then
differ from the scene the artist made, without a word. So versions are compared before any work.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from .errors import UsageError
from .local_blender import BPY_LAUNCHER
from .paths import data_dir, private_dir, write_private

Version = tuple[int, int]  # (major, minor): what decides whether a file can be read

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
# Blender up to 4.x: `BLENDER` + pointer size (_/-) + endianness (v/V) + 3 digits, e.g. BLENDER-v405.
_OLD_HEADER = re.compile(rb"^BLENDER[_-][vV](\d)(\d\d)")
# Blender 5.0 on: `BLENDER` + header size (2 digits) + `-` + format (2 digits) + v/V + 4 digits.
_NEW_HEADER = re.compile(rb"^BLENDER\d\d-\d\d[vV](\d\d)(\d\d)")
_VERSION_LINE = re.compile(r"^Blender (\d+)\.(\d+)(?:\.(\d+))?", re.M)
VERSION_TIMEOUT_S = 120
OLDEST_SUPPORTED = (4, 2)  # Blender's extension platform and the Cycles settings the job scripts use


def _head(path: Path, size: int = 32) -> bytes:
    with path.open("rb") as stream:
        magic = stream.read(4)
        stream.seek(0)
        if magic[:2] == _GZIP:
            with gzip.GzipFile(fileobj=stream) as unpacked:
                return unpacked.read(size)
        if magic == _ZSTD:
            import zstandard  # Blender's own compression since 3.0; a dependency of ours

            with zstandard.ZstdDecompressor().stream_reader(stream) as unpacked:
                return unpacked.read(size)
        return stream.read(size)


def file_version(path: Path) -> Version:
    """The Blender version that saved `path` (compressed or not). UsageError when it is no .blend file."""
    try:
        head = _head(path)
    except (OSError, EOFError, ValueError) as exc:
        raise UsageError(f"{path} cannot be read as a .blend file: {exc}") from exc
    found = _OLD_HEADER.match(head) or _NEW_HEADER.match(head)
    if found is None:
        raise UsageError(f"{path} is not a .blend file (or it is damaged): its header is not Blender's")
    return int(found.group(1)), int(found.group(2))


def parse_version_line(text: str) -> tuple[int, int, int] | None:
    """`Blender 4.5.4 LTS` (the first line of `blender --version`) -> (4, 5, 4)."""
    found = _VERSION_LINE.search(text)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)


def command_version(argv: tuple[str, ...]) -> tuple[int, int, int]:
    """The version of the Blender `argv` runs. Asking costs a Blender start, so the answer is kept per
    executable (by its path, size and time: an upgrade in place is asked again)."""
    if len(argv) == 2 and argv[1] == str(BPY_LAUNCHER):  # the bpy module: its package metadata says
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found = parse_version_line(f"Blender {importlib.metadata.version('bpy')}")
            if found:
                return found
    key = _cache_key(argv)
    cache = _read_cache()
    if key and isinstance(cache.get(key), list):
        return tuple(cache[key])  # type: ignore[return-value]
    found = _ask_version(argv)
    if key:
        cache[key] = list(found)
        _write_cache(cache)
    return found


def _cache_key(argv: tuple[str, ...]) -> str:
    executable = shutil.which(argv[0])
    if not executable:
        return ""
    stat = os.stat(executable)
    return json.dumps([*argv[1:], os.path.realpath(executable), stat.st_size, stat.st_mtime_ns])


def _cache_path() -> Path:
    return data_dir() / "blender-versions.json"


def _read_cache() -> dict[str, object]:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict[str, object]) -> None:
    path = _cache_path()
    with contextlib.suppress(OSError):
        private_dir(path.parent)
        temp = path.with_name(f"{path.name}.{os.getpid()}.part")
        write_private(temp, json.dumps(cache))
        os.replace(temp, path)


@functools.lru_cache(maxsize=8)
def _ask_version(argv: tuple[str, ...]) -> tuple[int, int, int]:
    try:
        done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"the Blender at {' '.join(argv)} does not run: {exc}") from exc
    found = parse_version_line(done.stdout)
    if done.returncode != 0 or found is None:
        tail = (done.stderr or done.stdout).strip()[-400:]
        raise UsageError(f"`{' '.join(argv)} --version` did not say which Blender it is (exit {done.returncode}): "
                         f"{tail}")
    return found


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def check_can_open(scene: Path, blender: tuple[str, ...], role: str) -> None:
    """Refuse when the Blender `blender` runs is older than the one that saved `scene`.

    `role` says what this Blender is for, in the message ("packs the scene", "renders locally")."""
    saved_by = file_version(scene)
    have = command_version(blender)
    if have[:2] < OLDEST_SUPPORTED:
        raise UsageError(f"the Blender that {role} is {dotted(have)} ({' '.join(blender)}), older than "
                         f"{dotted(OLDEST_SUPPORTED)}, the oldest braas-hpc works with: install a newer Blender "
                         "and set BRAAS_HPC_BLENDER to its command")
    if have[:2] < saved_by:
        raise UsageError(
            f"{scene.name} was saved by Blender {dotted(saved_by)}, but the Blender that {role} is "
            f"{dotted(have)} ({' '.join(blender)}): an older Blender drops what it does not know. "
            f"Use Blender {dotted(saved_by)} or newer (set BRAAS_HPC_BLENDER to its command)")


def cluster_warning(cluster_version: str, opens: Version, preset_name: str) -> str:
    """A warning when the cluster's Blender (its `blender --version` text, as `install` recorded it) is
    older than the file it will open; "" when it is not, or when the cluster's version is not known."""
    found = parse_version_line(cluster_version)
    if found is None or found[:2] >= opens:
        return ""
    return (f"the Blender on {preset_name} is {dotted(found)}, older than the file it will render (saved by "
            f"{dotted(opens)}): it may render without what it does not know. Install Blender {dotted(opens)} "
            f"or newer there (braas-hpc install {preset_name} --blender-...)")
