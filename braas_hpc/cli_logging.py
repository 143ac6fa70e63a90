"""What the CLI tells about its own work: `-v` (what is being done), `--debug` (also every command run on
a cluster, with its exit status and time), `--log-file` (the debug log appended to a private file).

Only braas-hpc's own loggers are shown: the SSH libraries' messages are not for users. No message of
ours carries a secret: passphrases, passwords and one-time codes go from the prompt to the SSH library
and are never formatted into a message; remote commands are logged, their output only by size.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

from .core.errors import UsageError

LOGGER = "braas_hpc"
_MARK = "braas_cli_handler"  # our handlers, so configuring twice in one process (tests) adds none twice


def configure(debug: bool = False, verbose: bool = False, log_file: str | None = None) -> None:
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(handler)
        handler.close()
    levels = []
    if debug or verbose:
        shown = logging.StreamHandler(sys.stderr)
        shown.setLevel(logging.DEBUG if debug else logging.INFO)
        shown.setFormatter(logging.Formatter("braas-hpc: debug: %(name)s: %(message)s" if debug
                                             else "braas-hpc: %(message)s"))
        _add(logger, shown)
        levels.append(shown.level)
    if log_file:
        written = logging.StreamHandler(_open_private(Path(log_file).expanduser()))
        written.setLevel(logging.DEBUG)
        written.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        _add(logger, written)
        levels.append(logging.DEBUG)
    if levels:
        logger.setLevel(min(levels))


def _add(logger: logging.Logger, handler: logging.Handler) -> None:
    setattr(handler, _MARK, True)
    logger.addHandler(handler)


def _open_private(path: Path):  # noqa: ANN202 (a text stream)
    """The log file opened for appending: created 0600; never through a link (someone else's file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"--log-file {path} is a symbolic link: give the file itself") from None
        raise UsageError(f"--log-file {path}: {describe_os_error(exc)}") from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # an older file of ours readable by others is made private
    except OSError:
        os.close(fd)
        raise UsageError(f"--log-file {path} is not yours to make private: give a file of your own") from None
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace", buffering=1)


def describe_os_error(exc: OSError) -> str:
    """An OSError as a sentence: what failed and on which file, without a traceback."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{reason}: {' -> '.join(names)}" if names else reason
