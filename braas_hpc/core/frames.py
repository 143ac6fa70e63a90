"""Frame specs: parsing `1-250`, `1-100:10`, `1,5,10-20`, `7`, and splitting them into array tasks."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import UsageError

# A guard against specs like `1-999999999` that would make a huge array and frames file.
MAX_FRAMES = 100_000
MAX_FRAME_NUMBER = 1_048_574  # Blender's MAXFRAME

# ASCII digits only (`\d` would take any script's digits), and no trailing newline (`$` would allow one).
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?")
_MAX_DIGITS = len(str(MAX_FRAME_NUMBER))


def _short(text: str, limit: int = 60) -> str:
    """A user's value for a message: whole when short, else its start (a 10,000-character spec stays readable)."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def parse_frames(spec: str) -> list[int]:
    """Return the sorted, distinct frames of a spec; raise UsageError naming the bad part."""
    text = spec.strip()
    if not text:
        raise UsageError("frame spec is empty: give a frame (7), a range (1-250), a step (1-100:10) or a list")
    frames: set[int] = set()
    for part in text.split(","):
        frames.update(_parse_part(part.strip(), spec))
        if len(frames) > MAX_FRAMES:
            raise UsageError(f"frame spec {_short(spec)!r} has more than {MAX_FRAMES} frames")
    return sorted(frames)


def _parse_part(part: str, spec: str) -> range:
    match = _RANGE.fullmatch(part)
    if not match:
        raise UsageError(
            f"invalid frame spec {_short(spec)!r}: {_short(part)!r} is not a frame number, a range like 1-250 "
            "or a stepped range like 1-100:10"
        )
    # Python refuses to convert numbers of more than 4300 digits (ValueError): check the length first.
    numbers = [g.lstrip("0") or "0" for g in match.groups() if g is not None]
    if any(len(n) > _MAX_DIGITS for n in numbers):
        raise UsageError(f"invalid frame spec {_short(spec)!r}: a number in {_short(part)!r} is above Blender's "
                         f"limit {MAX_FRAME_NUMBER}")
    start = int(numbers[0])
    end = int(numbers[1]) if len(numbers) > 1 else start
    step = int(numbers[2]) if len(numbers) > 2 else 1
    if end < start:
        raise UsageError(f"invalid frame spec {_short(spec)!r}: range {_short(part)!r} ends before it starts")
    if step < 1:
        raise UsageError(f"invalid frame spec {_short(spec)!r}: step in {_short(part)!r} must be at least 1")
    if end > MAX_FRAME_NUMBER:
        raise UsageError(f"invalid frame spec {_short(spec)!r}: frame {end} is above Blender's limit "
                         f"{MAX_FRAME_NUMBER}")
    if (end - start) // step + 1 > MAX_FRAMES:
        raise UsageError(f"frame spec {_short(spec)!r} has more than {MAX_FRAMES} frames")
    return range(start, end + 1, step)


def format_frames(frames: Iterable[int]) -> str:
    """The shortest comma list of ranges for a set of frames: [1,2,3,5] -> '1-3,5'."""
    ordered = sorted(set(frames))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def chunk_frames(frames: list[int], chunk: int) -> list[list[int]]:
    """Split frames into array tasks of at most `chunk` frames, so each task loads the scene once."""
    if chunk < 1:
        raise UsageError(f"chunk size must be at least 1, got {chunk}")
    return [frames[i : i + chunk] for i in range(0, len(frames), chunk)]
