"""Terminal prompts for the CLI: key passphrases and one-time codes, asked without echo.

Answers live only in memory for the life of the connection; they are never written or logged.
"""

from __future__ import annotations

import getpass
import sys
import threading


class TerminalPrompts:
    """Asks on the terminal; answers None when there is none (scripts, CI), so nothing hangs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one question at a time, even with several connections

    @staticmethod
    def interactive() -> bool:
        return sys.stdin.isatty()

    def passphrase(self, key_file: str) -> str | None:
        if not self.interactive():
            return None
        with self._lock:
            return getpass.getpass(f"Passphrase for {key_file}: ")

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None:
        if not self.interactive():
            return None
        with self._lock:
            for text in (name, instructions):
                if text:
                    print(text, file=sys.stderr)
            return [input(prompt) if echo else getpass.getpass(prompt) for prompt, echo in prompts]

    def confirm(self, question: str) -> bool:
        if not self.interactive():
            return False
        with self._lock:
            return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
