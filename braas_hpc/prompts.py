"""Terminal prompts for the CLI: key passphrases and one-time codes, asked without echo.

Answers live only in memory for the life of the connection; they are never written or logged. With
BRAAS_HPC_KEYRING=1 (and the `keyring` package) a key's passphrase is also kept in the OS keyring
(Secret Service, macOS Keychain, Windows Credential Locker), never in a file of ours. One-time
codes are never kept.
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from .core.display import plain

KEYRING_SERVICE = "braas-hpc"


def can_ask(prompts: object) -> bool:
    """Whether `prompts` (the transport pool's) can put a question to someone: a terminal's can."""
    interactive = getattr(prompts, "interactive", None)
    return bool(interactive()) if callable(interactive) else False


def _os_keyring() -> Any | None:
    if os.environ.get("BRAAS_HPC_KEYRING") != "1":
        return None
    try:
        import keyring  # optional: pip install 'braas-hpc[keyring]'
    except ImportError:
        return None
    return keyring


class TerminalPrompts:
    """Asks on the terminal; answers None when there is none (scripts, CI), so nothing hangs."""

    def __init__(self, ask_secret: Callable[[str], str] = getpass.getpass, ask: Callable[[str], str] = input,
                 interactive: bool | None = None, keyring: Any | None = None) -> None:
        self._ask_secret = ask_secret
        self._ask = ask
        self._interactive = interactive
        self._keyring = keyring if keyring is not None else _os_keyring()
        self._from_keyring: set[str] = set()
        self._lock = threading.Lock()  # one question at a time, even with several connections

    def interactive(self) -> bool:
        return sys.stdin.isatty() if self._interactive is None else self._interactive

    def _stored(self, method: str, *args: str) -> str | None:
        """A keyring call; a keyring that cannot be used (no backend, a locked store) is dropped for
        this process with a notice, and the passphrase is asked as without one."""
        if self._keyring is None:
            return None
        try:
            return getattr(self._keyring, method)(KEYRING_SERVICE, *args)  # type: ignore[no-any-return]
        except Exception as error:  # noqa: BLE001 - keyring.errors.* and back-end errors alike
            print(f"braas-hpc: the OS keyring cannot be used ({error}); the passphrase is not kept",
                  file=sys.stderr)
            self._keyring = None
            return None

    def passphrase(self, key_file: str) -> str | None:
        with self._lock:
            account = f"passphrase:{key_file}"
            stored = self._stored("get_password", account)
            if stored is not None and key_file not in self._from_keyring:
                self._from_keyring.add(key_file)
                return stored
            if stored is not None:  # asked again: the stored passphrase was wrong
                self._stored("delete_password", account)
            if not self.interactive():
                return None
            answer = self._ask_secret(f"Passphrase for {key_file}: ")
            if answer:
                self._stored("set_password", account, answer)
                self._from_keyring.add(key_file)
            return answer

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None:
        if not self.interactive():
            return None
        with self._lock:
            for text in (name, instructions):  # the server's words: shown, never acted on by the terminal
                if text:
                    print(plain(text), file=sys.stderr)
            return [self._ask(plain(prompt)) if echo else self._ask_secret(plain(prompt)) for prompt, echo in prompts]

    def confirm(self, question: str) -> bool:
        if not self.interactive():
            return False
        with self._lock:
            return self._ask(f"{question} [y/N] ").strip().lower() in ("y", "yes")
