"""Authentication: ssh asks for a passphrase or one-time code through SSH_ASKPASS, and we answer.

A tiny helper (askpass.py, run by ssh) hands the question over a private unix socket to this
process, which asks the user's Prompts object. Passphrases stay in memory, so a reconnect of the
same transport need not ask again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from . import askpass
from .client import Client

_PASSPHRASE_PROMPT = re.compile(r"Enter passphrase for key '(.*)':", re.S)
_PROMPT_WHO = re.compile(r"^\([^()\s]*@[^()\s]*\) ")  # OpenSSH prefixes kbdint prompts with "(user@host) "


class Asking(Client):
    """Serves ssh's questions while the master connects."""

    @contextlib.asynccontextmanager
    async def _askpass(self) -> AsyncIterator[dict[str, str]]:
        """Serve ssh's questions while the master connects; yields the environment that routes them here."""
        if not self._can_prompt():
            yield {}
            return
        directory = Path(self._control_path).parent
        wrapper = directory / f"{self._tag}.askpass"
        python = shlex.quote(sys.executable or "python3")
        script = f'#!/bin/sh\nexec {python} -I -S {shlex.quote(askpass.__file__)} "$@"\n'
        temp = wrapper.with_suffix(".tmp")
        temp.write_text(script)
        os.chmod(temp, 0o700)
        temp.replace(wrapper)
        path = directory / f"{self._tag}.{secrets.token_hex(3)}.ask"
        server = await asyncio.start_unix_server(self._answer, path=str(path))
        try:
            os.chmod(path, 0o600)
            yield {"SSH_ASKPASS": str(wrapper), "SSH_ASKPASS_REQUIRE": "force", askpass.SOCKET_ENV: str(path)}
        finally:
            server.close()
            path.unlink(missing_ok=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer: str | None = None
        try:
            request = json.loads(await reader.read())  # the helper half-closes after its question
            answer = await self._ask(str(request.get("prompt", "")), str(request.get("kind", "")))
        except (ValueError, AttributeError, OSError):
            answer = None
        except Exception as exc:  # noqa: BLE001 - the user's Prompts failed: connect() re-raises it
            self._prompt_error = exc
        try:
            writer.write(json.dumps({"answer": answer}).encode())
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _ask(self, prompt: str, kind: str) -> str | None:
        if kind == "confirm":
            return None  # yes/no questions (trust a host, use a key) are never answered for the user
        found = _PASSPHRASE_PROMPT.match(prompt.strip())
        if found:
            key = self._key_named(found.group(1))
            if key in self._passphrases and key not in self._tried:
                self._tried.add(key)
                return self._passphrases[key]  # this transport's earlier connection: don't ask again
            self._tried.add(key)
            answer = await asyncio.to_thread(self.prompts.passphrase, key)
            if answer is None:
                self._passphrases.pop(key, None)
            else:
                self._passphrases[key] = answer
            return answer
        # Anything else is the server's keyboard-interactive question (a one-time code, a password).
        answers = await asyncio.to_thread(self.prompts.kbdint, "", "", [(_PROMPT_WHO.sub("", prompt, count=1), False)])
        return answers[0] if answers else None

    def _key_named(self, shown: str) -> str:
        """ssh shows at most 100 characters of the key's path: map it back to the configured file."""
        for key in (str(Path(k).expanduser()) for k in self.target.key_files):
            if key == shown or (len(shown) >= 100 and key.startswith(shown)):
                return key
        return shown
