"""What an interactive session is, where its files are (on the cluster and here), and its connection file.

Remote layout, all under `<workdir>/braas-hpc-<user>/interactive/<session>/`: `blendfile`, `hostname.txt`,
`jobid.txt`, `command.sh`, `command.log`, `command.err` (the names users of the existing add-on know),
plus `job.sh`, `braas-session.sh`, `command.pid`, `command.exit` and `connection.json` (mode 0600).
Locally one JSON file per session in `<data dir>/interactive/`.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from braas_hpc.core.errors import UsageError
from braas_hpc.core.paths import data_dir

from .node_script import NAME as NODE_SCRIPT

_SESSION_NAME = re.compile(r"\Ai-\d{8}-\d{6}-[0-9a-f]{4}\Z")
_HOST = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")
_TOKEN = re.compile(r"\A[0-9a-f]{32,128}\Z")


def new_session_name() -> str:
    return f"i-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def check_session_name(name: str) -> str:
    if not _SESSION_NAME.match(name):
        raise UsageError(f"not a session name: {name!r} (they look like i-20260101-120000-ab12; "
                         "see `braas-hpc interactive status`)")
    return name


@dataclass(frozen=True)
class SessionPaths:
    """Every file of a session on the cluster, named in one place."""

    root: str  # <workdir>/braas-hpc
    name: str

    @property
    def dir(self) -> str:
        return posixpath.join(self.root, "interactive", self.name)

    def file(self, name: str) -> str:
        return posixpath.join(self.dir, name)

    @property
    def node_script(self) -> str:
        return self.file(NODE_SCRIPT)

    @property
    def log_dir(self) -> str:  # where the scheduler's own output file goes (the JobPaths face)
        return self.dir


@dataclass(frozen=True)
class SessionRecord:
    """A session as this computer remembers it."""

    name: str
    preset: str
    scheduler: str  # slurm | pbs
    job_id: str
    root: str
    walltime_min: int
    gpu: bool
    created: float
    ssh_backend: str | None = None

    @property
    def paths(self) -> SessionPaths:
        return SessionPaths(self.root, self.name)


def sessions_dir() -> Path:
    return data_dir() / "interactive"


def save_record(record: SessionRecord) -> None:
    directory = sessions_dir()
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / f".{record.name}.json.tmp"
    temp.write_text(json.dumps(asdict(record), indent=1))
    temp.replace(directory / f"{record.name}.json")


def load_record(name: str) -> SessionRecord:
    path = sessions_dir() / f"{check_session_name(name)}.json"
    if not path.is_file():
        raise UsageError(f"no interactive session {name} on this computer (see `braas-hpc interactive status`)")
    return SessionRecord(**json.loads(path.read_text()))


def all_records() -> list[SessionRecord]:
    directory = sessions_dir()
    if not directory.is_dir():
        return []
    return sorted((SessionRecord(**json.loads(p.read_text())) for p in directory.glob("i-*.json")),
                  key=lambda r: r.created)


def forget_record(name: str) -> None:
    (sessions_dir() / f"{check_session_name(name)}.json").unlink(missing_ok=True)


@dataclass(frozen=True)
class Connection:
    """Where a session's server listens on its node, and the secret it expects."""

    host: str
    port: int
    token: str

    @classmethod
    def parse(cls, text: str) -> Connection:
        """Validated: the values go into a tunnel request and a handshake, never trusted blindly."""
        try:
            data = json.loads(text)
            host, port, token = str(data["host"]), int(data["port"]), str(data["token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"the session's connection file is not valid: {text[:200]!r}") from exc
        if not _HOST.match(host) or not 1 <= port <= 65535 or not _TOKEN.match(token):
            raise UsageError(f"the session's connection file has invalid values (host {host!r}, port {port})")
        return cls(host, port, token)
