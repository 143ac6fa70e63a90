"""The job registry: one SQLite file in the user's data directory, so every command works from a
new process (status, wait, download) and the add-on sees what the CLI submitted."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import JobNotFound, UsageError
from .jobs import JobSpec
from .paths import data_dir, private_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    preset TEXT NOT NULL,
    spec TEXT NOT NULL,
    remote_root TEXT NOT NULL,
    scheduler_ids TEXT NOT NULL,
    state TEXT NOT NULL,
    tasks TEXT NOT NULL DEFAULT '{}',
    rounds INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
)
"""
# One animation over several clusters (core.group): its plan and its members, as one JSON document, and
# who drives it now (a lease: two processes looking at it never hand out the same frames twice).
_GROUPS = """
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    lease REAL NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
)
"""
# Columns added after the first release, for registries written by an older version.
_ADDED = {"tasks": "TEXT NOT NULL DEFAULT '{}'", "rounds": "INTEGER NOT NULL DEFAULT 0",
          "user_cancelled": "INTEGER NOT NULL DEFAULT 0", "id_tasks": "TEXT NOT NULL DEFAULT '{}'",
          "estimate": "TEXT NOT NULL DEFAULT ''"}


@dataclass(frozen=True)
class JobRecord:
    name: str
    preset: str
    spec: JobSpec
    remote_root: str
    scheduler_ids: tuple[str, ...]
    state: str
    tasks: dict[str, int]  # task counts by state when the job ended (finished jobs are not polled again)
    rounds: int  # resubmissions of missing frames so far
    created: float
    user_cancelled: bool = False  # `braas-hpc cancel` (or the panel's Cancel): never recovered
    # Tasks behind each scheduler id (an array's size; 1 for a plain job), so a partial answer from the
    # scheduler (accounting that has not recorded every task yet) is not taken for the whole job.
    id_tasks: dict[str, int] = field(default_factory=dict)


def registry_path() -> Path:
    return data_dir() / "jobs.sqlite"


def not_found(name: str) -> JobNotFound:
    return JobNotFound(f"no job named {name!r} in the registry ({registry_path()}); `braas-hpc status` lists jobs")


@contextmanager
def _db() -> Iterator[sqlite3.Connection]:
    path = registry_path()
    private_dir(path.parent)
    if not path.exists():  # sqlite would create it with the umask's mode; its journal copies the mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    # A timeout, because the CLI and the add-on may write at the same moment.
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute(_SCHEMA)
        conn.execute(_GROUPS)
        present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        for column, kind in _ADDED.items():
            if column not in present:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        with conn:
            yield conn
    finally:
        conn.close()


def _spec_from_json(text: str) -> JobSpec:
    return JobSpec.from_dict(json.loads(text))


def _record(row: tuple) -> JobRecord:
    name, preset, spec, root, ids, state, tasks, rounds, created, user_cancelled, id_tasks = row
    return JobRecord(name, preset, _spec_from_json(spec), root, tuple(json.loads(ids)), state, json.loads(tasks),
                     rounds, created, bool(user_cancelled), json.loads(id_tasks))


_COLUMNS = "name, preset, spec, remote_root, scheduler_ids, state, tasks, rounds, created, user_cancelled, id_tasks"


def add_job(spec: JobSpec, remote_root: str, id_tasks: dict[str, int], state: str) -> None:
    """A new job: `id_tasks` maps each scheduler id to the number of tasks it runs, in submission order."""
    now = time.time()
    with _db() as db:
        db.execute(
            "INSERT INTO jobs (name, preset, spec, remote_root, scheduler_ids, state, created, updated, id_tasks) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (spec.name, spec.preset, json.dumps(spec.to_dict()), remote_root, json.dumps(list(id_tasks)), state,
             now, now, json.dumps(id_tasks)),
        )


def set_state(name: str, state: str, tasks: dict[str, int] | None = None) -> None:
    with _db() as db:
        db.execute("UPDATE jobs SET state = ?, tasks = ?, updated = ? WHERE name = ?",
                   (state, json.dumps(tasks or {}), time.time(), name))


def add_round(name: str, id_tasks: dict[str, int], state: str) -> None:
    """A resubmission: more scheduler ids, one more round, and the job is live again. Read and written in
    one transaction: the CLI and the add-on may both add a round."""
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT scheduler_ids, id_tasks FROM jobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job named {name!r} in the registry ({registry_path()})")
        ids, known = json.loads(row[0]), json.loads(row[1] or "{}")
        db.execute("UPDATE jobs SET scheduler_ids = ?, rounds = rounds + 1, state = ?, tasks = '{}', updated = ?, "
                   "id_tasks = ? WHERE name = ?", (json.dumps([*ids, *id_tasks]), state, time.time(),
                                                   json.dumps({**known, **id_tasks}), name))


def set_frames(name: str, frames: tuple[int, ...], tasks: tuple[tuple[int, ...], ...]) -> None:
    """A group member's frames as its group moved chunks to it or away (the record's spec says what the job
    holds now: status counts and missing frames follow)."""
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT spec FROM jobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job named {name!r} in the registry ({registry_path()})")
        spec = {**json.loads(row[0]), "frames": list(frames), "tasks": [list(t) for t in tasks]}
        db.execute("UPDATE jobs SET spec = ?, updated = ? WHERE name = ?", (json.dumps(spec), time.time(), name))


def add_group(name: str, data: dict[str, object]) -> None:
    now = time.time()
    with _db() as db:
        db.execute("INSERT INTO groups (name, data, created, updated) VALUES (?, ?, ?, ?)",
                   (name, json.dumps(data), now, now))


def _group_data(text: str, cancelled: int) -> dict:
    """The group's document; `cancelled` lives in its own column, so a lease holder writing the document
    back can never undo a cancel made meanwhile."""
    return {**json.loads(text), "cancelled": bool(cancelled)}


def find_group(name: str) -> dict | None:
    with _db() as db:
        row = db.execute("SELECT data, cancelled FROM groups WHERE name = ?", (name,)).fetchone()
    return _group_data(*row) if row else None


def get_group(name: str) -> dict:
    found = find_group(name)
    if found is None:
        raise not_found(name)
    return found


def list_groups() -> list[str]:
    with _db() as db:
        return [row[0] for row in db.execute("SELECT name FROM groups ORDER BY created")]


def take_group(name: str, lease_s: float) -> dict | None:
    """The group's record, leased to this process for `lease_s` seconds (None: another holds it now)."""
    now = time.time()
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT data, cancelled, lease FROM groups WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise not_found(name)
        if row[2] > now:
            return None
        db.execute("UPDATE groups SET lease = ? WHERE name = ?", (now + lease_s, name))
    return _group_data(row[0], row[1])


def put_group(name: str, data: dict[str, object]) -> None:
    """The group's record as its lease holder changed it; the lease ends."""
    with _db() as db:
        db.execute("UPDATE groups SET data = ?, lease = 0, updated = ? WHERE name = ?",
                   (json.dumps(data), time.time(), name))


def cancel_group(name: str) -> None:
    """The user cancelled the group: nothing more is handed out, whoever holds its lease."""
    with _db() as db:
        if db.execute("UPDATE groups SET cancelled = 1, updated = ? WHERE name = ?", (time.time(), name)).rowcount == 0:
            raise not_found(name)


def group_cancelled(name: str) -> bool:
    with _db() as db:
        row = db.execute("SELECT cancelled FROM groups WHERE name = ?", (name,)).fetchone()
    return bool(row and row[0])


def forget_group(name: str) -> None:
    with _db() as db:
        db.execute("DELETE FROM groups WHERE name = ?", (name,))


def set_estimate(name: str, estimate: dict[str, object]) -> None:
    """What the job was expected to cost (core.estimate), with the actual once known (key `actual`)."""
    with _db() as db:
        db.execute("UPDATE jobs SET estimate = ? WHERE name = ?", (json.dumps(estimate), name))


def get_estimate(name: str) -> dict | None:
    with _db() as db:
        row = db.execute("SELECT estimate FROM jobs WHERE name = ?", (name,)).fetchone()
    return json.loads(row[0]) if row and row[0] else None


def cancelled_by_user(name: str, state: str) -> None:
    with _db() as db:
        db.execute("UPDATE jobs SET state = ?, tasks = '{}', user_cancelled = 1, updated = ? WHERE name = ?",
                   (state, time.time(), name))


def has_job(name: str) -> bool:
    with _db() as db:
        return db.execute("SELECT 1 FROM jobs WHERE name = ?", (name,)).fetchone() is not None


def get_job(name: str) -> JobRecord:
    with _db() as db:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise not_found(name)
    return _record(row)


def list_jobs() -> list[JobRecord]:
    with _db() as db:
        rows = db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created").fetchall()
    return [_record(row) for row in rows]


class StillActive(UsageError):
    """`forget` of a job not recorded as ended: it may still hold (and be billed for) its allocation."""

    def __init__(self, record: JobRecord, message: str) -> None:
        self.record = record
        super().__init__(message)


def thumbnail_path(name: str) -> Path:
    """The job's cached thumbnail (the add-on fetches the finish step's thumb.jpg once)."""
    return data_dir() / "thumbnails" / f"{name}.jpg"


def previews_path(name: str) -> Path:
    """The job's live previews as the status calls brought them (core.live)."""
    return data_dir() / "previews" / name


def forget(names: list[str], ended: Collection[str] | None) -> list[JobRecord]:
    """Remove jobs from the registry (and their cached thumbnails); nothing on any cluster changes.

    All or none, in one transaction: an unknown name, or a job whose recorded state is not in `ended`
    (None: any state goes), removes nothing. Its frames and files on the cluster stay where they are.
    """
    with _db() as db:
        db.execute("BEGIN IMMEDIATE")  # a round added meanwhile by the add-on or a `status` is seen here
        records = []
        for name in dict.fromkeys(names):
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job named {name!r} in the registry ({registry_path()}); nothing was forgotten")
            records.append(_record(row))
        for record in records:
            if ended is not None and record.state not in ended:
                raise StillActive(record, f"job {record.name} is {record.state} as far as braas-hpc knows: it may "
                                          f"still be using the allocation on {record.preset}. Cancel it first; "
                                          "nothing was forgotten")
        db.executemany("DELETE FROM jobs WHERE name = ?", [(r.name,) for r in records])
    for record in records:
        thumbnail_path(record.name).unlink(missing_ok=True)
        shutil.rmtree(previews_path(record.name), ignore_errors=True)
    return records
