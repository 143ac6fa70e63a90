"""Where braas-hpc keeps its files on the user's machine.

Both directories can be moved with an environment variable, which tests use to stay out of the
user's real configuration. They hold the job registry, hashes with local paths, session records and
rendered frames: both are the user's alone (0700, created so; braas-hpc's default ones are closed to
others when an earlier version left them open), and files we write in them are 0600.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import platformdirs

APP_NAME = "braas-hpc"


def _private_root(override: str | None, default: str) -> Path:
    path = Path(override) if override else Path(default)
    with contextlib.suppress(OSError):  # best effort: a writer that needs the directory says why it cannot
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not override and os.name == "posix":  # our own directory: an override may be anything
            mode = path.stat().st_mode
            if mode & 0o077 and path.stat().st_uid == os.getuid():
                path.chmod(0o700)
    return path


def config_dir() -> Path:
    """User configuration: presets/ (one TOML file per cluster)."""
    return _private_root(os.environ.get("BRAAS_HPC_CONFIG_DIR"), platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    """User data: the job registry and the jobs rendered on the `local` preset."""
    return _private_root(os.environ.get("BRAAS_HPC_DATA_DIR"), platformdirs.user_data_dir(APP_NAME))


def user_presets_dir() -> Path:
    return config_dir() / "presets"


def private_dir(path: Path) -> Path:
    """A directory under ours, created 0700 (with any missing parents)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (a temp file the caller then renames), readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        if os.name == "posix":
            os.fchmod(stream.fileno(), 0o600)  # a temp left by a crash keeps its old mode otherwise
        stream.write(text)
