"""What `wait`, `status --watch` and the add-on's follower do with the reports they get: frames fetched
as they land (`--auto-download`, with the download verb's own code: core.transfer), and, once a job
has ended, the user's `--on-done` command, run once per job.

The command is the user's, split as a shell would split it (shlex) and run without a shell; what the
job says (its name, state, folders) reaches it only in environment variables, never in its command
line, so nothing a job is called can become part of a command. Its failure is told, not fatal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import registry, transfer
from .context import job_context
from .errors import BraasError, UsageError
from .frames import format_frames
from .jobs import JobPaths
from .monitor import JobStatus, StatusReport
from .schedulers.base import TERMINAL

log = logging.getLogger(__name__)


def hook_argv(command: str) -> list[str]:
    """The --on-done command as words; refused (before anything runs) when it does not split or is empty."""
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise UsageError(f"--on-done {command!r} cannot be split into words: {error}") from None
    if not argv:
        raise UsageError("--on-done needs a command")
    return argv


def hook_env(status: JobStatus, output_dir: Path | None) -> dict[str, str]:
    """What the command learns about the job (documented in README, "When a job ends")."""
    cluster_dir = ""
    try:
        record = registry.get_job(status.job)
        cluster_dir = JobPaths(record.remote_root, record.name).out_dir
    except BraasError:
        pass  # forgotten meanwhile: the rest still says what happened
    return env_of(status.job, status.state, status.preset, status.frames_done, status.frames_total, status.missing,
                  output_dir, cluster_dir, status.preview)


def env_of(job: str, state: str, preset: str, frames_done: int, frames_total: int, missing: Sequence[int],
           output_dir: Path | None, cluster_dir: str = "", preview: str = "") -> dict[str, str]:
    """The BRAAS_* variables an --on-done command gets (a job over several clusters: `preset` lists them,
    no one cluster directory or preview)."""
    return {"BRAAS_JOB": job, "BRAAS_STATE": state, "BRAAS_PRESET": preset,
            "BRAAS_FRAMES_DONE": str(frames_done), "BRAAS_FRAMES_TOTAL": str(frames_total),
            "BRAAS_MISSING": format_frames(missing), "BRAAS_OUTPUT_DIR": str(output_dir or ""),
            "BRAAS_CLUSTER_DIR": cluster_dir, "BRAAS_PREVIEW": preview}


def _stdout_target() -> int:
    """The command's output goes to our standard error: standard output stays `--json`'s one document."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return asyncio.subprocess.DEVNULL


async def run_hook(argv: list[str], env: dict[str, str]) -> str:
    """Run the command once with the job's variables; "" when it succeeded, else what went wrong."""
    try:
        process = await asyncio.create_subprocess_exec(*argv, env={**os.environ, **env},
                                                       stdin=asyncio.subprocess.DEVNULL, stdout=_stdout_target())
    except OSError as error:
        return f"--on-done {shlex.join(argv)} could not start: {error.strerror or error}"
    code = await process.wait()
    return "" if code == 0 else f"--on-done {shlex.join(argv)} exited with status {code}"


@dataclass
class JobEnd:
    """Follows the reports of a watch for the jobs that `counts` (`status --watch`: those not ended when it
    began): fetches their new frames (`download_to` gives each job's folder; None: no auto-download) and
    runs `on_done` once for each that ends, after its last frames came. `tell` gets a line for the user
    for everything worth saying (frames fetched, the command's failure)."""

    on_done: list[str] | None = None
    download_to: Callable[[str], Path] | None = None
    counts: Callable[[str], bool] = lambda _job: True
    tell: Callable[[str], None] = lambda line: log.info("%s", line)
    ended: set[str] = field(default_factory=set)
    fetched: dict[str, int] = field(default_factory=dict)  # frames_done when each job's frames were last fetched

    async def seen(self, report: StatusReport) -> None:
        for status in report.statuses:
            await self.status(status)

    async def status(self, status: JobStatus) -> None:
        if status.job in self.ended or not self.counts(status.job):
            return
        ending = status.state in TERMINAL
        folder = self.download_to(status.job) if self.download_to else None
        if folder is not None and (ending or status.frames_done > self.fetched.get(status.job, 0)):
            await self._download(status, folder)
        if not ending:
            return
        self.ended.add(status.job)
        if self.on_done is not None:
            if problem := await run_hook(self.on_done, hook_env(status, folder)):
                self.tell(f"{status.job}: {problem}")

    async def _download(self, status: JobStatus, folder: Path) -> None:
        try:
            got = await transfer.download_once(job_context(status.job), folder)
        except BraasError as error:  # the next report tries again; at the end, it is said
            self.tell(f"{status.job}: frames not downloaded this time: {error}")
            return
        self.fetched[status.job] = status.frames_done
        if got.downloaded:
            self.tell(f"{status.job}: {got.downloaded} new frame(s) in {folder}")
