"""What a running job shows between its frames: the newest preview JPEG its tasks made on the cluster, and
how far each running task is within its frame (Cycles' sample count from the task's log).

Both come with the status call, as one more command of its batch (core.batch), never a call of their
own: the command sends a preview only when it is not the one this computer holds already (a preview is
a few KiB; most polls send none), and one short line per running task of the latest round.
Previews are kept in this computer's data directory, one per job (the newest replaces the older one).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import registry
from .jobs import JobPaths
from .paths import private_dir, write_private
from .registry import JobRecord

PREVIEW_BYTES = 64 * 1024  # a 256-pixel JPEG is a few KiB: anything larger on the cluster is not ours
LOG_TAIL_BYTES = 16 * 1024  # of each running task's log, read on the cluster; one line of it comes back
LINE_BYTES = 300
PREVIEW_NAME = re.compile(r"^frame_(\d{1,9})\.jpg\Z")
_STAMP = ".stamp"

# Arguments: the caps (preview KiB, log tail bytes, line bytes), then "<job dir> <marker prefix of the
# latest round> <preview key held here>" per job. Prints "P\t<dir>\t<name>\t<key>\t<JPEG, base64>" for the
# newest preview when its key ("<mtime>/<name>") is not the one held, and "T\t<dir>\t<task>\t<last progress
# line of its log>" per task whose marker says running.
_GLIMPSE_SCRIPT = r"""
kib=$1 tail_bytes=$2 line_bytes=$3; shift 3
progress='Sample [0-9]+/[0-9]+|Rendered [0-9]+/[0-9]+ samples|BRAAS-PROGRESS|[|] Finished'
while [ "$#" -ge 3 ]; do
  d=$1 p=$2 have=$3; shift 3
  newest=$(find "$d/status/previews" -mindepth 1 -maxdepth 1 -type f -name 'frame_*.jpg' -size "-${kib}k" \
           -printf '%T@\t%f\n' 2>/dev/null | sort -n | tail -n 1)
  if [ -n "$newest" ]; then
    name=${newest#*	}; key="${newest%%	*}/$name"
    if [ "$key" != "$have" ] && data=$(base64 -w 0 < "$d/status/previews/$name"); then
      printf 'P\t%s\t%s\t%s\t%s\n' "$d" "$name" "$key" "$data"
    fi
  fi
  for m in "$d/status/${p}task-"*.json; do
    [ -e "$m" ] && grep -q '"state": "running"' "$m" || continue
    t=${m##*/}; t=${t%.json}
    line=$(tail -c "$tail_bytes" "$d/log/$t.log" 2>/dev/null | tr '\r\t\000' '\n  ' | grep -a -E "$progress" |
           tail -n 1 | cut -c "1-$line_bytes")
    printf 'T\t%s\t%s\t%s\n' "$d" "$t" "$line"
  done
done
exit 0
"""


@dataclass(frozen=True)
class TaskProgress:
    task: str  # the task's marker name: "task-3", "r1-task-3" in a later round
    frame: int | None  # the frame it renders, when its log says
    percent: float | None  # of that frame's samples; None: nothing measured yet (loading, synchronising)

    def to_json(self) -> dict[str, object]:
        return {"task": self.task, "frame": self.frame, "percent": self.percent}

    def text(self) -> str:
        where = f"frame {self.frame} " if self.frame is not None else ""
        return f"{self.task}: {where}{'...' if self.percent is None else f'{self.percent:.0f}%'}"


@dataclass(frozen=True)
class Glimpse:
    preview: Path | None = None  # here, the newest the cluster had (or the one held from before)
    tasks: tuple[TaskProgress, ...] = ()


previews_dir = registry.previews_path


def held_key(job: str) -> str:
    """The key of the preview held here ("" when none): the cluster sends only another one."""
    folder = previews_dir(job)
    try:
        key = (folder / _STAMP).read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    name = key.rpartition("/")[2]
    return key if PREVIEW_NAME.match(name) and (folder / name).is_file() else ""


def held_preview(job: str) -> Path | None:
    key = held_key(job)
    return previews_dir(job) / key.rpartition("/")[2] if key else None


def _store(job: str, name: str, key: str, data: bytes) -> Path:
    """The new preview in place of the older one: the JPEG first, then its key (a crash between the two
    costs one more transfer, never a wrong picture)."""
    folder = private_dir(previews_dir(job))
    target = folder / name
    temp = folder / f".{name}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
    os.replace(temp, target)
    stamp = folder / f"{_STAMP}.part"
    write_private(stamp, key)
    os.replace(stamp, folder / _STAMP)
    for old in folder.iterdir():
        if old.name != name and PREVIEW_NAME.match(old.name):
            with contextlib.suppress(OSError):
                old.unlink()
    return target


def glimpse_argv(records: list[JobRecord]) -> list[str]:
    args: list[str] = []
    for record in records:
        prefix = f"r{record.rounds}-" if record.rounds else ""
        args += [JobPaths(record.remote_root, record.name).job_dir, prefix, held_key(record.name)]
    caps = [str(PREVIEW_BYTES // 1024 + 1), str(LOG_TAIL_BYTES), str(LINE_BYTES)]
    return ["sh", "-c", _GLIMPSE_SCRIPT, "sh", *caps, *args]


_TILES_SAMPLES = re.compile(r"(?:Rendered (\d+)/(\d+) Tiles, )?Sample (\d+)/(\d+)")
_RENDERED_SAMPLES = re.compile(r"Rendered (\d+)/(\d+) samples")
_FRAME = re.compile(r"(?:\bframe=|^Fra:)(\d+)")


def progress_of(line: str) -> tuple[int | None, float | None]:
    """(frame, percent of its samples) from a task's last progress line: our BRAAS-SAMPLES line, Cycles'
    own status as Blender 4 prints it ("Fra:3 ... | Rendered 2/8 Tiles, Sample 12/64"), "Rendered 12/64
    samples", a frame's end (BRAAS-PROGRESS, "| Finished": 100). Anything else: (None, None)."""
    frame_found = _FRAME.search(line)
    frame = int(frame_found.group(1)) if frame_found else None
    if line.startswith("BRAAS-PROGRESS") or line.rstrip().endswith("| Finished"):
        return frame, 100.0
    if found := _TILES_SAMPLES.search(line):
        tile, tiles, sample, samples = (int(g) if g else 0 for g in found.groups())
        fraction = sample / samples if samples else 0.0
        if tiles:
            fraction = (tile + fraction) / tiles
        return frame, round(100 * min(1.0, fraction), 1)
    if found := _RENDERED_SAMPLES.search(line):
        sample, samples = int(found.group(1)), int(found.group(2))
        return frame, round(100 * min(1.0, sample / samples), 1) if samples else 0.0
    return frame, None


def read(stdout: str, records: list[JobRecord]) -> dict[str, Glimpse]:
    """Each job's glimpse from the command's answer, storing a new preview here; a job the answer does
    not mention keeps the preview held here, with no progress."""
    by_dir = {JobPaths(r.remote_root, r.name).job_dir: r.name for r in records}
    previews: dict[str, Path] = {}
    tasks: dict[str, list[TaskProgress]] = {}
    for line in stdout.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[1] not in by_dir:
            continue
        job = by_dir[fields[1]]
        if fields[0] == "P" and len(fields) == 5 and PREVIEW_NAME.match(fields[2]) and \
                fields[3].endswith(f"/{fields[2]}"):
            with contextlib.suppress(binascii.Error, ValueError):
                data = base64.b64decode(fields[4], validate=True)
                if data[:3] == b"\xff\xd8\xff" and len(data) <= PREVIEW_BYTES:
                    previews[job] = _store(job, fields[2], fields[3], data)
        elif fields[0] == "T" and len(fields) == 4 and re.fullmatch(r"(r\d+-)?task-\d+", fields[2]):
            frame, percent = progress_of(fields[3])
            tasks.setdefault(job, []).append(TaskProgress(fields[2], frame, percent))
    return {r.name: Glimpse(previews.get(r.name) or held_preview(r.name),
                            tuple(sorted(tasks.get(r.name, ()), key=lambda t: _task_number(t.task))))
            for r in records}


def _task_number(task: str) -> int:
    return int(task.rpartition("-")[2])
