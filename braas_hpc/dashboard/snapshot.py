"""What the page shows, as plain JSON-ready data: built from the status report, the task markers and
log tails the refresher brought, and the frames already downloaded here. Pure: no network, no bpy.

A job is shown as the sum of its parts, one per cluster it runs on, so the page draws one bar per part
and one for the job. A group (one film over several clusters, core.group) is one entry of its own: a bar
per member cluster (rendered, held, seconds per frame, queue wait), its pool and moves, and its member
jobs' frames, previews and logs together; the member jobs are not listed again on their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..core.frames import format_frames
from ..core.group import GroupStatus
from ..core.jobs import FRAME_FILE, frame_file_name
from ..core.monitor import JobStatus
from ..core.registry import JobRecord
from ..core.schedulers.base import COMPLETED, PENDING, RUNNING, TERMINAL, UNKNOWN

SHOWN_IN_BROWSER = ("png", "jpg")  # EXR and TIFF get a placeholder: browsers do not draw them
LOG_LINES = 30


@dataclass(frozen=True)
class Part:
    """A job's share on one cluster."""

    preset: str
    state: str
    frames_done: int | None  # None: the cluster did not answer
    frames_total: int
    error: dict[str, str] | None = None

    def to_json(self) -> dict[str, object]:
        return {"preset": self.preset, "state": self.state, "frames_done": self.frames_done,
                "frames_total": self.frames_total, "error": self.error}


@dataclass
class Extras:
    """What a refresh brought beside the state: per-frame seconds and nodes (task markers), log tails."""

    timings: dict[int, float] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()
    logs: dict[str, str] = field(default_factory=dict)


def timings_of(markers: list[dict[str, object]]) -> tuple[dict[int, float], tuple[str, ...]]:
    """Seconds per frame and the nodes used, from a job's task markers (every round's)."""
    seconds: dict[int, float] = {}
    nodes: set[str] = set()
    for marker in markers:
        timings = marker.get("timings")
        if isinstance(timings, dict):
            for frame, value in timings.items():
                if str(frame).isdigit():
                    seconds[int(frame)] = float(value)
        if isinstance(node := marker.get("node"), str) and node:
            nodes.add(node)
    return dict(sorted(seconds.items())), tuple(sorted(nodes))


def local_frames(folder: Path) -> dict[str, int]:
    """Frame files downloaded into `folder`: name -> mtime in ns (a cache key for the page)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return {}
    found = {}
    for entry in entries:
        if FRAME_FILE.match(entry.name) and entry.is_file(follow_symlinks=False):
            found[entry.name] = entry.stat(follow_symlinks=False).st_mtime_ns
    return found


def overall_state(parts: list[Part]) -> str:
    """One word for a job from its parts: running while any part runs, ended only when all have."""
    states = {p.state for p in parts}
    if len(states) == 1:
        return states.pop()
    for state in (RUNNING, PENDING, UNKNOWN):
        if state in states:
            return state
    return COMPLETED if states == {COMPLETED} else sorted(states - {COMPLETED})[0]


def image_url(job: str, name: str, stamp: int) -> str:
    return f"/frames/{quote(job)}/{quote(name)}?v={stamp}"


def preview_url(job: str, preview: str) -> str | None:
    """The page's address of the small JPEG the status brought (core.live), or None."""
    try:
        stamp = os.stat(preview).st_mtime_ns if preview else None
    except OSError:
        return None
    return f"/previews/{quote(job)}?v={stamp}" if stamp is not None else None


def job_view(record: JobRecord, parts: list[Part], missing: tuple[int, ...] | None, extras: Extras,
             here: dict[str, int], preview: str = "", tasks: tuple[dict[str, object], ...] = ()) -> dict[str, object]:
    """One job as the page draws it. `missing`: frames not on the cluster (None: not known now);
    `here`: the job's frames downloaded to this computer (local_frames); `preview`: the newest preview
    the status brought (shown large until a frame is downloaded); `tasks`: each running task's progress."""
    spec = record.spec
    state = overall_state(parts)
    lost = set(missing or ())
    frames = []
    latest: tuple[int, str] | None = None
    for frame in spec.frames:
        name = frame_file_name(frame, spec.extension)
        stamp = here.get(name)
        shown = stamp is not None and spec.extension in SHOWN_IN_BROWSER
        url = image_url(record.name, name, stamp) if shown and stamp is not None else None
        if url and (latest is None or stamp > latest[0]):  # type: ignore[operator]
            latest = (stamp, url)  # type: ignore[assignment]
        frames.append({"frame": frame, "rendered": missing is not None and frame not in lost,
                       "here": stamp is not None, "image": url})
    known = [p.frames_done for p in parts if p.frames_done is not None]
    ended = state in TERMINAL
    return {
        "job": record.name, "presets": [p.preset for p in parts], "state": state,
        "frames_done": sum(known) if known else None, "frames_total": len(spec.frames),
        "frames_spec": format_frames(spec.frames), "missing": format_frames(sorted(lost)) if missing else "",
        "clusters": [p.to_json() for p in parts], "created": record.created, "rounds": record.rounds,
        "scene": Path(spec.scene).name, "format": spec.extension, "frames": frames,
        "latest": latest[1] if latest else preview_url(record.name, preview), "here": len(here),
        "latest_is_preview": latest is None and bool(preview_url(record.name, preview)), "tasks": list(tasks),
        "timings": [[frame, seconds] for frame, seconds in extras.timings.items()], "nodes": list(extras.nodes),
        "logs": {name: _tail(text) for name, text in extras.logs.items()},
        "can": {"cancel": not ended, "resubmit": ended and bool(lost), "download": bool(known) and sum(known) > 0},
    }


@dataclass(frozen=True)
class MemberView:
    """A group member's job as the last refresh saw it (core.group): its record, its status (None when
    its cluster did not answer: `error`), and the markers and log tails brought with it."""

    preset: str
    record: JobRecord | None
    status: JobStatus | None
    extras: Extras
    error: str = ""


def group_view(status: GroupStatus, film: dict[int, tuple[str, str]], members: list[MemberView],
               here: dict[str, int], moves: list[str]) -> dict[str, object]:
    """One group (a film over several clusters) as the page draws it: one bar per cluster, the frames
    not handed out yet, the recent moves, and its members' frames, previews, seconds per frame and logs
    together. `film`: frame -> (rendered/held/pool, the cluster); `here`: frames downloaded into the
    group's folder (local_frames); `moves`: the group's newest hand-outs and moves, oldest first."""
    records = [m.record for m in members if m.record is not None]
    extension = records[0].spec.extension if records else ""
    latest: tuple[int, str] | None = None
    frames = []
    for frame, (where, preset) in sorted(film.items()):
        name = frame_file_name(frame, extension) if extension else ""
        stamp = here.get(name)
        url = image_url(status.name, name, stamp) if stamp is not None and extension in SHOWN_IN_BROWSER else None
        if url and stamp is not None and (latest is None or stamp > latest[0]):
            latest = (stamp, url)
        frames.append({"frame": frame, "rendered": where == "rendered", "here": stamp is not None, "image": url,
                       "where": where, "preset": preset})
    previews = [(m.record.name, m.status.preview) for m in members if m.record and m.status and m.status.preview]
    newest_preview = max(previews, key=lambda p: _mtime(p[1]), default=None)
    preview = preview_url(*newest_preview) if newest_preview else None
    by_preset = {m.preset: m for m in members}
    clusters = []
    for member in status.members:
        view = by_preset.get(member.preset)
        clusters.append({**member.to_json(), "frames_total": status.frames_total,
                         "error": view.error if view is not None and view.error else None})
    timings: dict[int, float] = {}
    nodes: set[str] = set()
    logs: dict[str, str] = {}
    tasks: list[dict[str, object]] = []
    for m in members:
        timings.update(m.extras.timings)
        nodes.update(m.extras.nodes)
        logs.update({f"{m.preset}: {name}": _tail(text) for name, text in m.extras.logs.items()})
        if m.status is not None:
            tasks += [{**shown, "task": f"{m.preset} {shown.get('task')}"}
                      for shown in (p.to_json() for p in m.status.progress)]
    ended = status.state in TERMINAL
    return {
        "job": status.name, "group": True, "state": status.state, "frames_done": status.frames_done,
        "frames_total": status.frames_total, "pool": status.pool, "missing": format_frames(status.missing),
        "frames_spec": format_frames(sorted(film)), "presets": [m.preset for m in status.members],
        "members": [m.record.name for m in members if m.record is not None],
        "scene": Path(records[0].spec.scene).name if records else "", "format": extension,
        "created": min((r.created for r in records), default=0), "rounds": 0,
        "clusters": clusters, "moves": list(moves), "frames": frames, "here": len(here),
        "latest": latest[1] if latest else preview, "latest_is_preview": latest is None and preview is not None,
        "tasks": tasks, "timings": [[f, s] for f, s in sorted(timings.items())], "nodes": sorted(nodes), "logs": logs,
        "can": {"cancel": not ended, "resubmit": False, "download": status.frames_done > 0},
    }


def _tail(text: str) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-LOG_LINES:])


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0
