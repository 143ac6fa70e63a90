"""Domain errors with messages a user can act on. The CLI and the add-on show `str(error)`."""

from __future__ import annotations

# The CLI's exit statuses (README, `braas-hpc --help`): scripts branch on them.
EXIT_FAILED = 1  # the job or the command failed
EXIT_USAGE = 2  # bad usage or input: nothing was changed
EXIT_UNREACHABLE = 3  # a cluster could not be reached or would not let us in
EXIT_TIMED_OUT = 124  # `wait --timeout` ran out (as timeout(1))
EXIT_INTERRUPTED = 130  # Ctrl+C (128 + SIGINT, as shells say)


class BraasError(Exception):
    """Base of every error braas-hpc reports to a user. `exit_code` follows the CLI convention."""

    exit_code = EXIT_FAILED


class UsageError(BraasError):
    """Bad input: a missing file, an unknown preset, an invalid frame spec. Nothing was changed."""

    exit_code = EXIT_USAGE


class PresetError(UsageError):
    """A preset file is missing, malformed or has invalid values."""


class ConnectionFailed(BraasError):
    """The cluster could not be reached or refused us (host key, authentication, network)."""

    exit_code = EXIT_UNREACHABLE


class WaitTimedOut(BraasError):
    """`wait --timeout` ran out before the job ended; the job goes on."""

    exit_code = EXIT_TIMED_OUT


class RemoteCommandError(BraasError):
    """A command on the cluster exited non-zero. Carries the command and the tail of its stderr."""

    def __init__(self, command: str, exit_status: int | None, stdout: str, stderr: str) -> None:
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-10:]) or "(no error output)"
        super().__init__(f"command failed with exit status {exit_status}: {command}\n{tail}")


class AnswerTooLarge(BraasError):
    """A command on the cluster answered more than braas-hpc reads from one command; nothing was kept."""


class SchedulerError(BraasError):
    """The scheduler answered something we could not understand (the raw text is in the message)."""


class JobNotFound(UsageError):
    """No job of that name in the local registry."""


class HostKeyError(ConnectionFailed):
    """The server's host key is not trusted. Carries what the user needs to decide.

    `public_key` is the key as an OpenSSH line ("ssh-ed25519 AAAA..."), `fingerprint` is "SHA256:...".
    """

    def __init__(self, message: str, host: str, port: int, key_type: str, fingerprint: str, public_key: str,
                 known_hosts: str) -> None:
        self.host = host
        self.port = port
        self.key_type = key_type
        self.fingerprint = fingerprint
        self.public_key = public_key
        self.known_hosts = known_hosts
        super().__init__(message)


class HostKeyUnknown(HostKeyError):
    """No key is recorded for this host: show the fingerprint, trust it only on an explicit yes."""


class HostKeyChanged(HostKeyError):
    """A different key is recorded for this host: refused, the user must fix known_hosts by hand."""


class HostKeyRevoked(HostKeyError):
    """The key is listed `@revoked` in known_hosts: refused, and never offered for trust."""


class AuthenticationFailed(ConnectionFailed):
    """The server refused every credential we offered (key, agent, passphrase, one-time code)."""


class TransferError(BraasError):
    """A file transfer failed or its checksum did not match after resuming."""


class ConnectionLost(ConnectionFailed):
    """An open connection dropped; the next call reconnects, and transfers resume where they stopped."""


def connection_failure_kind(error: BaseException) -> str | None:
    """What kept us from a cluster, in the words scripts read (`status --json`, a `--json` error):
    "host_key", "authentication" or "connection"; None when the error is not a connection failure."""
    for kind, error_type in (("host_key", HostKeyError), ("authentication", AuthenticationFailed),
                             ("connection", ConnectionFailed)):
        if isinstance(error, error_type):
            return kind
    return None
