"""A submission in one conversation with the cluster's submission helper (cluster_scripts/submit_helper.py).

The client writes one request: the directory check, the cluster scripts and store files it could send
(by SHA-256), and the steps (link the inputs, write the job's files, submit). The helper answers which
files it lacks; the client streams exactly those on the same channel and the helper does the rest and
answers once. Two round trips plus the new bytes, where the step-by-step way took one per command.
When the request offers no store file (a new round of a job: its files travel in the request), the
helper is expected to need nothing: the request goes as the command's whole input, through the
connection's kept shell, and the answer comes back in one round trip. Should the helper lack a script
after all, it stops before any step and the conversation is held as above.

The helper runs from the installed scripts when this computer has seen them installed there (checked
by SHA-256 before it runs), else it is sent inline in the command line, and installs the scripts itself.
A login node without a usable python3 raises HelperUnavailable: the caller then goes step by step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import progress
from .errors import BraasError, ConnectionLost, RemoteCommandError, UsageError
from .jobs import store_dir
from .scripts import manifest_text, script_source, scripts_version, shipped_digests, shipped_scripts
from .store import MissingFromStore
from .transport import CommandResult, Transport
from .tree import ensure_argv, refuse_findings

log = logging.getLogger(__name__)

HELPER = "submit_helper.py"
PROTOCOL = 1
SEND_BLOCK = 1 << 20
STALE_HELPER = 97  # the installed helper is not this release's: it goes inline instead
# Runs the installed helper only when its bytes are this release's ($2): never a copy someone changed.
_RUN_INSTALLED = '[ "$(sha256sum < "$1" 2>/dev/null | cut -c1-64)" = "$2" ] || exit 97; exec "$3" "$1"'
_NO_INTERPRETER = (126, 127)


class HelperUnavailable(BraasError):
    """The login node cannot run the helper (no python3, or one too old): go step by step."""


class SentFileChanged(UsageError):
    """A file failed its SHA-256 on arrival; the cluster kept nothing of it."""


@dataclass(frozen=True)
class Offer:
    """What the client can send: store files by SHA-256 (None: no local copy), and whether the
    package's cluster scripts are to be checked and repaired in `scripts_dir`."""

    store: Mapping[str, Path | None]
    sizes: Mapping[str, int]
    scripts_dir: str = ""


@dataclass
class Outcome:
    results: list[dict[str, Any]]
    stopped: int | None  # the step that ended with a status it does not allow
    scripts_sent: tuple[str, ...] = ()
    store_sent: tuple[str, ...] = ()
    sent_bytes: int = 0  # every byte streamed (scripts and store files), less what earlier tries left
    store_bytes: int = 0  # of those, the store files' (what a submission reports as uploaded)


def _script_offer(scripts_dir: str) -> dict[str, Any]:
    digests = shipped_digests()
    return {"dir": scripts_dir, "manifest": manifest_text(),
            "files": {name: [digests[name], path.stat().st_size] for name, path in shipped_scripts().items()}}


def scripts_dir(root: str) -> str:
    return posixpath.join(root, "scripts", scripts_version())


def helper_argv(root: str, python: str, installed: bool) -> list[str]:
    if installed:
        path = posixpath.join(scripts_dir(root), HELPER)
        return ["sh", "-c", _RUN_INSTALLED, "sh", path, shipped_digests()[HELPER], python]
    return [python, "-c", script_source(HELPER)]


class _Stale(Exception):
    """The installed helper's bytes are not this release's (it did not run)."""


async def converse(transport: Transport, root: str, dirs: Sequence[str], offer: Offer, steps: list[dict[str, Any]],
                   python: str = "python3", installed: bool = False) -> Outcome:
    """One conversation (see the module's text). `installed`: this computer saw the helper installed in
    `root` (a stale copy costs one more round trip: it then goes inline)."""
    if installed:
        try:
            return await _converse_either(transport, root, dirs, offer, steps, helper_argv(root, python, True))
        except _Stale:
            log.info("the installed submission helper is not this release's: sending it inline")
    return await _converse_either(transport, root, dirs, offer, steps, helper_argv(root, python, False))


async def _converse_either(transport: Transport, root: str, dirs: Sequence[str], offer: Offer,
                           steps: list[dict[str, Any]], argv: list[str]) -> Outcome:
    if not offer.sizes and (outcome := await _ask_at_once(transport, root, dirs, offer, steps, argv)) is not None:
        return outcome
    return await _converse(transport, root, dirs, offer, steps, argv)


async def _ask_at_once(transport: Transport, root: str, dirs: Sequence[str], offer: Offer,
                       steps: list[dict[str, Any]], argv: list[str]) -> Outcome | None:
    """The request as the helper's whole input, its answer read once the helper ended; None when it
    lacked a file (its input ended before the file could come, so it ran no step)."""
    done = await transport.run(argv, stdin=_request(root, dirs, offer, steps), timeout=None, check=False)
    need: dict[str, Any] = {}
    final: dict[str, Any] | None = None
    errors = done.stderr.splitlines()
    for text in done.stdout.splitlines():
        message = _message(text)
        if message is None:
            errors.append(text)
        elif "need" in message:
            need = message["need"] if isinstance(message["need"], dict) else {}
        else:
            final = message
    if final is None and done.exit_status == STALE_HELPER:
        raise _Stale()
    if need.get("scripts") or need.get("store"):
        log.info("the submission helper lacks %s: sending it", ", ".join([*need.get("scripts", []),
                                                                           *need.get("store", [])]))
        return None
    if final is None:
        raise _no_answer(argv, done.exit_status, errors)
    _raise_error(root, final)
    return Outcome(final.get("results", final.get("done", [])), final.get("stopped"))


def _request(root: str, dirs: Sequence[str], offer: Offer, steps: list[dict[str, Any]]) -> bytes:
    request = {"protocol": PROTOCOL, "root": root, "check": ensure_argv(root, dirs),
               "scripts": _script_offer(offer.scripts_dir) if offer.scripts_dir else None,
               "store": {"dir": store_dir(root), "files": dict(offer.sizes)}, "steps": steps}
    return json.dumps(request).encode() + b"\n"


async def _converse(transport: Transport, root: str, dirs: Sequence[str], offer: Offer, steps: list[dict[str, Any]],
                    argv: list[str]) -> Outcome:
    handle = await transport.converse(argv)
    assert handle.write is not None and handle.write_eof is not None
    sending: asyncio.Task[tuple[tuple[str, ...], tuple[str, ...], int]] | None = None
    final: dict[str, Any] | None = None
    lacking: list[str] = []
    errors: list[str] = []
    try:
        with contextlib.suppress(ConnectionLost):  # it ended at once (no python3): its status says why
            await handle.write(_request(root, dirs, offer, steps))
        async for line in handle.lines:
            message = _message(line.text) if not line.stderr else None
            if message is None:
                errors.append(line.text)
            elif "need" in message:
                lacking = [d for d in message["need"].get("store", []) if offer.store.get(d) is None]
                if lacking:  # nothing to send it from: end the request; the helper stops before any step
                    await handle.write_eof()
                else:
                    sending = asyncio.create_task(_send(handle, message["need"], offer))
            else:
                final = message
        status = await handle.wait()
        sent = await _finish_sending(sending, final)
    finally:
        if sending is not None and not sending.done():
            sending.cancel()
        await handle.close()
    if lacking:
        raise MissingFromStore(lacking)
    if final is None and status == STALE_HELPER:
        raise _Stale()
    if final is None:
        raise _no_answer(argv, status, errors)
    _raise_error(root, final)
    return Outcome(final.get("results", final.get("done", [])), final.get("stopped"), *sent)


async def _finish_sending(sending: asyncio.Task | None, final: dict[str, Any] | None
                          ) -> tuple[tuple[str, ...], tuple[str, ...], int, int]:
    if sending is None:
        return (), (), 0, 0
    try:
        return await sending
    except ConnectionLost:
        if final is None:
            raise
        return (), (), 0, 0  # the helper stopped reading to answer with an error: the answer says why


def _message(text: str) -> dict[str, Any] | None:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


async def _send(handle: Any, need: dict[str, Any], offer: Offer
                ) -> tuple[tuple[str, ...], tuple[str, ...], int, int]:
    """The files the helper asked for, in its order (scripts, then store files, each by name/digest)."""
    shipped = shipped_scripts()
    scripts = [name for name in need.get("scripts", []) if name in shipped]
    store = [d for d in need.get("store", []) if offer.store.get(d) is not None]
    resume = need.get("from", {})
    files = [(shipped[name], shipped[name].stat().st_size, 0) for name in scripts]
    # From where an earlier, cut try stopped (the helper kept those bytes and checks the whole).
    files += [(offer.store[d], offer.sizes[d], _offset(resume.get(d), offer.sizes[d])) for d in store]  # type: ignore[misc]
    counter = progress.ByteCounter("uploading", sum(size - offset for _, size, offset in files))
    done = 0
    for path, size, offset in files:
        done = await _send_file(handle, path, size, offset, done, counter.for_item("all"))
    await handle.write_eof()
    return tuple(scripts), tuple(store), done, sum(size - offset for _, size, offset in files[len(scripts):])


def _offset(value: object, size: int) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= size:
        raise BraasError(f"the cluster's submission helper named an impossible resume point: {value!r}")
    return value


async def _send_file(handle: Any, path: Path, size: int, offset: int, done: int, report: Any) -> int:
    """Bytes `offset` to `size` of `path` (a file that shrank since it was hashed is padded: the
    helper's SHA-256 check then refuses it, and the stream stays in step)."""
    left = size - offset
    with path.open("rb") as stream:
        stream.seek(offset)
        while left:
            block = await asyncio.to_thread(stream.read, min(SEND_BLOCK, left)) or bytes(min(SEND_BLOCK, left))
            await handle.write(block)
            left -= len(block)
            done += len(block)
            report(done, 0)
    return done


def _no_answer(argv: list[str], status: int | None, errors: list[str]) -> BraasError:
    said = "\n".join(errors[-10:])
    if status in _NO_INTERPRETER or "SyntaxError" in said or "ImportError" in said:
        return HelperUnavailable(f"the login node cannot run the submission helper: {said[-300:] or status}")
    if status is None:
        return ConnectionLost("the connection dropped during the submission")
    return RemoteCommandError(argv[0] + " (submission helper)", status, "", said)


def _raise_error(root: str, final: dict[str, Any]) -> None:
    error = final.get("error")
    if not error:
        return
    if error in ("untrusted", "check"):
        check = final.get("check", {})
        CommandResult(tuple(ensure_argv(root)), check.get("status"), check.get("stdout", ""),
                      check.get("stderr", "")).check()
        refuse_findings(root, check.get("stdout", ""))
    if error == "changed":
        raise SentFileChanged("a file arrived on the cluster with other bytes than were hashed here (it changed "
                              "on this computer while it was being sent, or a partial copy a dropped connection "
                              "left was damaged); nothing was submitted and the copy was removed: submit again")
    if error == "io":
        raise BraasError(f"writing on the cluster failed, so nothing was submitted: {final.get('why', '')} "
                         "(a full disk or quota shows here: free space in the working directory and submit again)")
    if error == "cut":
        raise ConnectionLost(f"the submission was cut off: {final.get('why', '')}")
    raise BraasError(f"the cluster's submission helper refused the request ({error}): {final.get('why', '')}")


def step_result(outcome: Outcome, index: int, argv: Sequence[str]) -> CommandResult:
    """Step `index`'s command result, as transport.run would have returned it (not checked)."""
    if index >= len(outcome.results):
        return CommandResult(tuple(argv), None, "", "not run: an earlier step stopped the submission")
    result = outcome.results[index]
    return CommandResult(tuple(argv), result.get("status"), result.get("stdout", ""), result.get("stderr", ""))


__all__ = ["HELPER", "HelperUnavailable", "Offer", "Outcome", "SentFileChanged", "converse", "helper_argv",
           "scripts_dir", "step_result"]
