"""Interactive sessions for the page: every session of a cluster in the same remote call as its jobs.

`braas-hpc interactive status` asks a session at a time (up to five commands each); here the holding
jobs of all of a cluster's sessions go to the scheduler in one query and their node, command and
connection files are read by one script, as steps of the cluster's status batch (core.batch). What
only this computer knows (the local end of a tunnel, the frames per second a viewport receives) comes
from the session's live file (braas_hpc_interactive.core.live), when a tunnel or a viewport runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from braas_hpc_interactive.core import live
from braas_hpc_interactive.core.records import Connection, SessionRecord

from ..core import batch
from ..core.errors import UsageError
from ..core.schedulers import scheduler_for
from ..core.schedulers.base import TERMINAL, UNKNOWN

# For each session directory: "<dir>\0<hostname.txt>\0<command.exit or \1>\0<command.pid>\0<connection.json>\0".
_FILES_SCRIPT = r"""
for d in "$@"; do
  printf '%s\0' "$d"
  head -c 256 -- "$d/hostname.txt" 2>/dev/null; printf '\0'
  if [ -f "$d/command.exit" ]; then head -c 64 -- "$d/command.exit"; else printf '\001'; fi; printf '\0'
  head -c 64 -- "$d/command.pid" 2>/dev/null; printf '\0'
  head -c 4096 -- "$d/connection.json" 2>/dev/null; printf '\0'
done
exit 0
"""
FIELDS = 5


def steps_for(kind: str, sessions: Sequence[SessionRecord]) -> list[batch.Step]:
    """The batch steps that tell these sessions' state (one scheduler's sessions)."""
    if not sessions:
        return []
    scheduler = scheduler_for(kind)
    ids = [s.job_id for s in sessions]
    steps = [batch.Step("sessions_query", scheduler.query_argv(ids)),
             batch.Step("sessions_files", ["sh", "-c", _FILES_SCRIPT, "sh", *(s.paths.dir for s in sessions)])]
    if live_argv := scheduler.live_query_argv(ids):
        steps.append(batch.Step("sessions_live", live_argv))
    return steps


def _job_states(kind: str, answers: batch.Answers) -> dict[str, str]:
    """Scheduler key -> state; the live queue wins over the history (sacct lags a job that just started)."""
    scheduler = scheduler_for(kind)
    states: dict[str, str] = {}
    if (done := answers.take("sessions_query")) is not None and done.exit_status == 0:
        states.update((s.job_id, s.state) for s in scheduler.parse_query(done.stdout))
    if (done := answers.take("sessions_live")) is not None and done.exit_status == 0:
        states.update((s.job_id, s.state) for s in scheduler.parse_fallback(done.stdout))
    return states


def _files(answers: batch.Answers) -> dict[str, list[str]]:
    done = answers.take("sessions_files")
    if done is None:
        return {}
    parts = done.stdout.split("\0")
    return {parts[i]: parts[i + 1:i + FIELDS] for i in range(0, len(parts) - FIELDS + 1, FIELDS)}


def views(kind: str, sessions: Sequence[SessionRecord], answers: batch.Answers) -> list[dict[str, object]]:
    """The sessions as the page shows them (the same words as `braas-hpc interactive status`)."""
    scheduler = scheduler_for(kind)
    states, files = _job_states(kind, answers), _files(answers)
    shown = []
    for record in sessions:
        state = states.get(scheduler.job_key(record.job_id), UNKNOWN)
        node, exit_text, pid, conn = files.get(record.paths.dir, ["", "\1", "", ""])
        if exit_text != "\1":
            command = f"exited {exit_text.strip()}"
        else:
            command = "running" if pid.strip() else "none"
            command = "ended with the job" if command == "running" and state in TERMINAL else command
        port = None
        if command == "running" and state not in TERMINAL and conn.strip():
            try:
                port = Connection.parse(conn).port
            except UsageError:
                port = None
        here = live.read(record.name)
        shown.append({"session": record.name, "preset": record.preset, "job": record.job_id, "state": state,
                      "node": node.strip()[:253], "command": command, "port": port, "gpu": record.gpu,
                      "created": record.created, "tunnel": here.get("tunnel"), "fps": here.get("fps")})
    return shown


def unanswered(sessions: Sequence[SessionRecord], why: str) -> list[dict[str, object]]:
    return [{"session": r.name, "preset": r.preset, "job": r.job_id, "state": UNKNOWN, "node": "",
             "command": "", "port": None, "gpu": r.gpu, "created": r.created, "tunnel": None, "fps": None,
             "error": why} for r in sessions]
