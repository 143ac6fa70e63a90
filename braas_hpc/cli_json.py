"""The `--json` contract (docs/json.md): every command prints one JSON object whose `schema` is the
version of this contract, raised when a field changes meaning or goes away (a new field does not raise
it). SCHEMAS holds each command's document as a JSON Schema (draft 2020-12): the tests check every
command's real output against it, and that docs/json.md describes every field."""

from __future__ import annotations

import json
from typing import Any

JSON_SCHEMA = 1

Schema = dict[str, Any]
STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
STRS: Schema = {"type": "array", "items": STR}
STATES = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "UNKNOWN"]
FRAMES: Schema = {"type": "string", "pattern": r"^([0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)?$"}  # "1-3,7"


def document(data: dict[str, object], indent: int | None = 1) -> str:
    """`data` as the command's JSON document, `schema` first."""
    return json.dumps({"schema": JSON_SCHEMA, **data}, indent=indent)


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object with exactly these fields (`optional` ones may be absent): an undocumented field fails."""
    return {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required),
            "additionalProperties": False}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def top(fields: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **obj({"schema": {"const": JSON_SCHEMA}, **fields}, optional)}


CHECK = obj({"what": STR, "ok": nullable(BOOL), "found": STR, "fix": STR, "facts": STRS})
JOB_STATUS = {"job": STR, "preset": STR, "state": {"enum": STATES}, "frames_done": INT, "frames_total": INT,
              "tasks": {"type": "object", "additionalProperties": INT}, "scheduler_ids": STRS, "missing": FRAMES,
              "summary": BOOL, "preview": nullable(STR),
              "progress": {"type": "array", "items": obj({"task": STR, "frame": nullable(INT),
                                                          "percent": nullable(NUM)})}}
SUBMITTED = {"job": STR, "preset": STR, "frames": FRAMES, "tasks": INT, "scheduler_ids": STRS, "job_dir": STR,
             "uploaded_bytes": INT, "uploaded_files": INT, "skipped_files": INT, "outside_project": STRS,
             "notes": STRS, "finish_id": STR, "scripts_updated": STRS, "warnings": STRS}
BILLING = {"enum": ["core-hours", "gpu-hours", "node-hours"]}
ESTIMATE = {"source": {"enum": ["history", "calibration"]}, "detail": STR, "frames": INT, "tasks": INT,
            "parallel": INT, "frame_seconds": NUM, "task_seconds": NUM, "gap_seconds": NUM, "wall_seconds": NUM,
            "cores_per_task": INT, "gpus_per_task": INT, "core_hours": NUM, "gpu_hours": NUM, "node_hours": NUM,
            "billing": BILLING, "billing_factor": NUM, "billing_confirmed": BOOL, "units": NUM}
BALANCE = obj({"project": STR, "resource": STR, "unit": STR, "remaining": NUM, "total": nullable(NUM),
               "used": nullable(NUM)})
ALLOCATION = {"preset": STR, "account": STR, "command": STRS, "balances": {"type": "array", "items": BALANCE},
              "remaining": nullable(BALANCE)}
COSTS = {"estimate": nullable(obj(ESTIMATE)), "allocation": nullable(obj(ALLOCATION)), "warnings": STRS,
         "notes": STRS}
ACTUAL = obj({"wall_seconds": NUM, "core_hours": NUM, "gpu_hours": NUM, "task_seconds": nullable(NUM),
              "frame_seconds": nullable(NUM)})
MEMBER = obj({"preset": STR, "job": STR, "state": STR, "frames_done": INT, "frames_held": INT,
              "seconds_per_frame": NUM, "slots": INT, "queue_seconds": NUM, "error": STR})
GROUP_STATUS = {"job": STR, "group": {"const": True}, "state": {"enum": STATES}, "frames_done": INT,
                "frames_total": INT, "pool": INT, "missing": FRAMES, "members": {"type": "array", "items": MEMBER},
                "moves": STRS}
DOWNLOADED = {"job": STR, "dest": STR, "downloaded": INT, "skipped": INT, "ignored": STRS, "refetched": STRS}
LOGS = {"job": STR, "state": {"enum": STATES}, "lines": INT, "logs": {"type": "object", "additionalProperties": STR}}
ERROR_KINDS = ["usage", "connection", "host_key", "authentication", "timeout", "failed", "system", "interrupted"]

SCHEMAS: dict[str, Schema] = {
    "error": top({"error": obj({"kind": {"enum": ERROR_KINDS}, "message": STR, "exit_code": INT})}),
    "render": top({**SUBMITTED, "frames_dir": STR}),
    "submit": top(SUBMITTED, {"costs": obj(COSTS)}),
    "submit --estimate": top({"job": STR, "preset": STR, **COSTS}),
    "allocation": top(ALLOCATION),
    "submit --dry-run": top({"script": STR, "submit": STR, "frames_file": STR, "job_dir": STR, "finish_script": STR,
                             "finish": STR, "placeholders": {"type": "object", "additionalProperties": STR}}),
    "status": top({"jobs": {"type": "array", "items": {"anyOf": [
        obj({**JOB_STATUS, "error": {"type": "null"}}, {"estimate": obj(ESTIMATE, {"actual": ACTUAL})}),
        obj({**JOB_STATUS, "frames_done": {"type": "null"}, "missing": {"type": "null"},
             "error": obj({"kind": {"enum": ["preset_missing", "preset", "host_key", "authentication", "connection",
                                             "error"]}, "message": STR})})]}}},
                  {"groups": {"type": "array", "items": obj(GROUP_STATUS)}}),
    "wait": top(JOB_STATUS),
    "forget": top({"forgotten": STRS}),
    # A job over several clusters (submit --preset a,b): the group's documents.
    "submit (group)": top({**GROUP_STATUS, "submissions": {"type": "array", "items": obj(SUBMITTED)},
                           "warnings": STRS}),
    "status (group)": top({"jobs": {"type": "array", "items": obj(GROUP_STATUS)}}),
    "wait (group)": top(GROUP_STATUS),
    "download (group)": top({"job": STR, "dest": STR, "downloaded": INT, "skipped": INT, "summary": STR,
                             "members": {"type": "array", "items": obj(DOWNLOADED)}}),
    "logs (group)": top({"job": STR, "members": {"type": "array", "items": obj(LOGS)}}),
    "download": top(DOWNLOADED),
    "video": top({"job": STR, "video": STR, "codec": {"enum": ["h264", "prores", "av1"]}, "fps": NUM,
                  "made_on": {"enum": ["cluster", "here"]}, "frames_downloaded": INT, "encoder": STR, "seconds": NUM,
                  "gaps": {"type": "array", "items": INT}}),
    "cancel": top({"job": STR, "cancelled": STRS}),
    "logs": top(LOGS),
    "resubmit": top({**SUBMITTED, "chunk": INT, "exclude_nodes": STRS}),
    "gc": top({"preset": STR, "store": STR, "removed": BOOL, "total_bytes": INT,
               "files": {"type": "array", "items": obj({"sha256": STR, "size": INT})}, "abandoned_bytes": INT,
               "abandoned_uploads": {"type": "array", "items": obj({"name": STR, "size": INT})}}),
    "test": top({"preset": STR, "backend": STR, "host": STR, "connect_ms": NUM, "command_ms": NUM, "node": STR,
                 "arch": STR, "commands": STRS, "workdir": STR, "workdir_ok": BOOL}),
    "install": top({"preset": STR, "scripts_dir": STR, "scripts_version": STR, "scripts_source": STR,
                    "uploaded": STRS, "unchanged": STRS, "changed": BOOL, "seconds": NUM},
                   {"blender": obj({"blender": STR, "env": STRS, "source": {"type": "object",
                                                                          "additionalProperties": STR},
                                    "version": STR, "tree": STR, "tree_sha256": STR, "directory": STR,
                                    "changed": BOOL, "uploaded_bytes": INT, "resumed_from": INT, "record": STR})}),
    "workdir": top({"preset": STR, "candidates": {"type": "array", "items": obj(
        {"path": STR, "source": STR, "exists": BOOL, "writable": BOOL})}}),
    "workdir --set": top({"preset": STR, "workdir": STR, "file": STR}),
    "presets": top({"presets": {"type": "array", "items": obj(
        {"name": STR, "title": STR, "scheduler": STR, "host": STR, "yours": BOOL, "ready": STR,
         "unconfirmed": STRS, "checks": {"type": "array", "items": CHECK}})}}),
    "presets add": top({"name": STR, "file": STR, "ready": STR, "checks": {"type": "array", "items": CHECK}}),
    "doctor": top({"preset": STR, "ready": STR, "checks": {"type": "array", "items": CHECK}}),
    "keeper": top({"running": BOOL}, {
        "pid": INT, "version": STR, "closed": INT, "why": STR,
        "kept": {"type": "array", "items": obj({"backend": STR, "host": STR, "port": INT, "user": STR,
                                                "proxy_jump": STR, "opened": NUM, "busy": INT, "idle_s": NUM,
                                                "keep_s": NUM})}}),
    "extension build": top({"built": STRS}),
    "dashboard": top({"url": STR, "port": INT}),
    "interactive start": top({"session": STR, "job": STR, "node": STR, "dir": STR}),
    "interactive tunnel": top({"local_port": INT, "local_path": nullable(STR), "host": STR, "port": INT}),
    "interactive status": top({"sessions": {"type": "array", "items": obj(
        {"session": STR, "preset": STR, "job": STR, "state": {"enum": STATES}, "node": STR, "command": STR,
         "port": nullable(INT)})}}),
}
