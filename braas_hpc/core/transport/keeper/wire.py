"""What travels on the keeper's socket: one JSON object a line, bytes in base64, errors with their type.

A request is the first line of a connection; the keeper answers on the same connection with any number of
`ask` (a login question for this client's user), `progress` and `line` messages, then one `ok` or
`error`. The client answers an `ask` with an `answer` line. Closing the connection cancels the request.
A stream first says `opened`; its input goes as `{"write": n}` lines each followed by n raw bytes (not
JSON), acknowledged with `wrote` (or `write_error`), then `write_eof`, acknowledged with `input_closed`.
Typed errors (core/errors.py) cross with their fields, so a host-key refusal, a refused login and a lost
connection are the same exceptions on both sides.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
from typing import Any

from ... import errors as errors_module
from ...errors import BraasError, ConnectionFailed, HostKeyError, RemoteCommandError

PROTOCOL = 2  # 2: streams say `opened` and take input frames
# What decides a login and its trust beside the target: a client whose values differ from the keeper's
# connects directly.
ENV_KEYS = ("HOME", "SSH_AUTH_SOCK")


def encode_bytes(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def decode_bytes(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def json_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


async def send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json_line(message))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at end of file."""
    line = await reader.readline()
    if not line:
        return None
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a keeper message must be a JSON object")
    return message


def encode_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, HostKeyError):
        return {"type": type(exc).__name__, "message": str(exc), "host": exc.host, "port": exc.port,
                "key_type": exc.key_type, "fingerprint": exc.fingerprint, "public_key": exc.public_key,
                "known_hosts": exc.known_hosts}
    if isinstance(exc, RemoteCommandError):
        return {"type": "RemoteCommandError", "command": exc.command, "exit_status": exc.exit_status,
                "stdout": exc.stdout, "stderr": exc.stderr}
    if isinstance(exc, BraasError):
        return {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, TimeoutError):  # before OSError, of which it is one
        return {"type": "TimeoutError", "message": str(exc)}
    if isinstance(exc, OSError):
        return {"type": "OSError", "errno": exc.errno, "strerror": exc.strerror or str(exc),
                "filename": None if exc.filename is None else str(exc.filename)}
    return {"type": "KeeperFailure", "message": f"{type(exc).__name__}: {exc}"}


def decode_error(data: dict[str, Any]) -> BaseException:
    kind = str(data.get("type", ""))
    message = str(data.get("message", ""))
    if kind == "RemoteCommandError":
        return RemoteCommandError(data["command"], data["exit_status"], data["stdout"], data["stderr"])
    if kind == "OSError":
        code = data.get("errno")
        if code is None:
            return OSError(data.get("strerror", ""))
        return OSError(code, data.get("strerror") or errno.errorcode.get(code, ""), data.get("filename"))
    if kind == "TimeoutError":
        return TimeoutError(message)
    cls = getattr(errors_module, kind, None)
    if isinstance(cls, type) and issubclass(cls, HostKeyError):
        return cls(message, data["host"], data["port"], data["key_type"], data["fingerprint"], data["public_key"],
                   data["known_hosts"])
    if isinstance(cls, type) and issubclass(cls, BraasError) and cls is not RemoteCommandError:
        return cls(message)
    return ConnectionFailed(f"the connection keeper failed: {message}")
