"""Downloading frames: only the ones not yet here, names checked before any local path is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import registry
from .errors import UsageError
from .jobs import FRAME_FILE, JobPaths
from .presets import load_preset
from .transport import transport_for
from .transport.base import Progress


@dataclass(frozen=True)
class DownloadResult:
    job: str
    dest: Path
    downloaded: int
    skipped: int
    ignored: tuple[str, ...]  # remote names that are not frame files, never written locally


def _safe_target(dest: Path, name: str) -> Path | None:
    """A local path for a remote name, or None when the name is not one of our frame files."""
    if not FRAME_FILE.match(name):
        return None
    target = (dest / name).resolve()
    return target if target.parent == dest.resolve() else None


async def download(name: str, dest: Path, progress: Progress | None = None) -> DownloadResult:
    record = registry.get_job(name)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"download destination {dest} exists and is not a directory")
    dest.mkdir(parents=True, exist_ok=True)
    paths = JobPaths(record.remote_root, record.name)
    downloaded = skipped = 0
    ignored: list[str] = []
    transport = transport_for(load_preset(record.preset))
    for entry in sorted(await transport.listdir(paths.out_dir), key=lambda e: e.name):
        target = None if entry.is_dir else _safe_target(dest, entry.name)
        if target is None:
            if not entry.name.startswith("."):  # hidden names are frames still being written
                ignored.append(entry.name)
            continue
        if target.is_file() and target.stat().st_size == entry.size:
            skipped += 1
            continue
        await transport.get(f"{paths.out_dir}/{entry.name}", target, progress)
        downloaded += 1
    return DownloadResult(name, dest, downloaded, skipped, tuple(ignored))
