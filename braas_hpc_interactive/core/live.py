"""What only this computer knows about a session while something of it runs here: the local end of
its tunnel (`braas-hpc interactive tunnel`) and the frames per second the viewport receives. Written
to a small private file beside the session's record, read by `braas-hpc dashboard`; a file whose
writer has exited is ignored."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from braas_hpc.core.paths import private_dir, write_private

from .records import check_session_name, sessions_dir


def live_path(name: str) -> Path:
    return sessions_dir() / f"{check_session_name(name)}.live"  # not *.json: all_records reads those


def publish(name: str, **fields: object) -> None:
    """Add `fields` (tunnel, fps) to what this process says about the session."""
    path = live_path(name)
    known = read(name) if path.exists() else {}
    if known.get("pid") != os.getpid():
        known = {}
    private_dir(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_private(temp, json.dumps({**known, **fields, "pid": os.getpid(), "updated": time.time()}))
    os.replace(temp, path)


def clear(name: str) -> None:
    path = live_path(name)
    if read(name).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not our writer
        return False
    return True


def read(name: str) -> dict[str, object]:
    """The session's live fields, or {} when nothing of it runs here."""
    try:
        data = json.loads(live_path(name).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not _alive(data.get("pid")):
        return {}
    fps = data.get("fps")
    tunnel = data.get("tunnel")
    return {"pid": data["pid"], "tunnel": tunnel if isinstance(tunnel, str) else None,
            "fps": round(float(fps), 1) if isinstance(fps, int | float) and not isinstance(fps, bool) else None}
