"""Idempotent submission: a client killed during `submit` and run again must not create a second job.

Before anything is sent, the request is remembered under a fingerprint (the request and the scene
file's size and time). A second run of the same request while that is unfinished takes the same job
name, so it lands in the same job directory on the cluster, where every scheduler submission is
guarded by a record file (core.rounds.GUARD): a submission that already happened is answered from its record instead of
being made again. Once the job is registered the intent is forgotten, so submitting the same scene
again on purpose makes a new job.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from .paths import data_dir, private_dir, write_private
from .spec import SubmitRequest

MAX_AGE_S = 24 * 3600  # an older unfinished submission is not resumed: the user has moved on

def _directory() -> Path:
    return data_dir() / "submitting"


def fingerprint(request: SubmitRequest) -> str:
    scene = request.scene.expanduser().resolve()
    stat = scene.stat()
    fields = {k: str(v) for k, v in asdict(request).items() if k != "ssh_backend"}
    key = json.dumps({**fields, "scene": str(scene), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def unfinished(print_: str) -> str | None:
    """The job name of an unfinished submission of the same request, if there is a recent one."""
    path = _directory() / f"{print_}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if time.time() - float(data.get("started", 0)) > MAX_AGE_S:
        return None
    name = data.get("job")
    return name if isinstance(name, str) and name else None


def remember(print_: str, job: str) -> None:
    directory = _directory()
    private_dir(directory)
    temp = directory / f".{print_}.part"
    write_private(temp, json.dumps({"job": job, "started": time.time()}))
    os.replace(temp, directory / f"{print_}.json")


def forget(print_: str) -> None:
    (_directory() / f"{print_}.json").unlink(missing_ok=True)
