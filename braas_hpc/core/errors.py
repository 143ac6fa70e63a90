"""Domain errors with messages a user can act on. The CLI and the add-on show `str(error)`."""

from __future__ import annotations


class BraasError(Exception):
    """Base of every error braas-hpc reports to a user. `exit_code` follows the CLI convention."""

    exit_code = 1


class UsageError(BraasError):
    """Bad input: a missing file, an unknown preset, an invalid frame spec. Nothing was changed."""

    exit_code = 2


class PresetError(UsageError):
    """A preset file is missing, malformed or has invalid values."""


class ConnectionFailed(BraasError):
    """The cluster could not be reached or refused us (host key, authentication, network)."""


class RemoteCommandError(BraasError):
    """A command on the cluster exited non-zero. Carries the command and the tail of its stderr."""

    def __init__(self, command: str, exit_status: int | None, stdout: str, stderr: str) -> None:
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-10:]) or "(no error output)"
        super().__init__(f"command failed with exit status {exit_status}: {command}\n{tail}")


class SchedulerError(BraasError):
    """The scheduler answered something we could not understand (the raw text is in the message)."""


class JobNotFound(UsageError):
    """No job of that name in the local registry."""
