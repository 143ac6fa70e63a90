"""Writing the job's JSON files on the cluster (task markers, the summary). Stdlib only: imported by
scripts that run inside Blender and by plain Python."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


def write_json_atomic(path: str, data: dict) -> None:
    """Readers see the old file or the new one, never half of one. The temp file is a new file of our
    own (O_EXCL, mode 0600, random name), never one that was there: nothing planted under a fixed temp
    name (a link to another file) is written through."""
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
