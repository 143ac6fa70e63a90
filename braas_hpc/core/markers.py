"""A task's marker (status/task-N.json), read from the cluster: checked before anything uses it.

The marker is a file on the cluster, so its bytes are not ours: Python's json reads NaN and Infinity,
and a wrong type (a timing as text, a node as a number) would raise deep in the arithmetic of the
status or the recovery plan, for every job at once. A marker that does not check is damaged: its own
task counts as failed, every other task and job goes on.
"""

from __future__ import annotations

import json
import math

# A marker holds a few fields and one number per frame: read at most this much of one, and of all of a
# job's markers together. A cut marker no longer parses: damaged, like any other.
MARKER_BYTES = 1024 * 1024
ALL_MARKERS_BYTES = 64 * 1024 * 1024

_NUMBER = (int, float)


def _finite(value: object) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} in a marker")


def _fields_ok(data: dict[str, object]) -> bool:
    """The fields status and recovery read hold what the task writes (None where not known yet)."""
    checks = (
        all(isinstance(data.get(key), str) for key in ("node", "state") if key in data),
        all(_finite(data[key]) for key in ("started", "finished") if data.get(key) is not None),
        data.get("exit_code") is None or type(data["exit_code"]) is int,
        all(isinstance(data[key], list) and all(type(f) is int for f in data[key])
            for key in ("frames", "rendered", "skipped", "failed") if key in data),
    )
    timings = data.get("timings", {})
    return all(checks) and isinstance(timings, dict) and all(
        _finite(seconds) and seconds >= 0 for seconds in timings.values())  # type: ignore[operator]


def parse_marker(text: str) -> dict[str, object] | None:
    """The marker as a dict, or None when it is not one (empty, torn by a rewrite, or damaged)."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and _fields_ok(data) else None
