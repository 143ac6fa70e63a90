"""braas-hpc's submission helper on the login node: a whole submission in one conversation.

The client runs `python3 submit_helper.py` and writes one request (a line of JSON) on its stdin. The
helper checks the user's braas-hpc directory, answers which cluster scripts and which store files it
lacks, reads exactly those files from stdin (back to back, as one stream), puts each in place once its
SHA-256 checks out, then runs the request's steps in order (link the job's inputs, write its files,
submit it and its finish step) and answers with what each step did. So a submission costs the client
two round trips plus the time its new bytes take, wherever the cluster is.

Lines on stdout, one JSON object each:
  {"need": {"scripts": [names], "store": [sha256, ...], "from": {sha256: bytes already here}}}
  {"done": [result, ...]}                                   every step ran
  {"stopped": i, "results": [result, ...]}                  step i ended with a status it does not allow
  {"error": "why", ...}                                     a bad request, an untrusted directory, a cut
Nothing the request names leaves the user's directory: every path is checked to lie inside it, every
digest and name is checked, files are written under private temp names and renamed into place once
whole. A cut (end of input before the files it asked for) runs no step; what arrived of a store file is
kept under its temp name, and the next try sends only the rest (the need answer says from where).

Python 3.6 or newer, standard library only: a login node's python3 can be that old (RHEL 8, SLES 15).
"""

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional

PROTOCOL = 1
REQUEST_LIMIT = 256 << 20  # a directory-mode scene with very many files still fits
OUTPUT_LIMIT = 64 << 10  # what is kept of a step's stdout/stderr in the answer
BLOCK = 1 << 20
HEX64 = re.compile(r"[0-9a-f]{64}")
SCRIPT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
MANIFEST = "MANIFEST.json"
PART_SUFFIX = ".braas-part"  # as the client's resumable uploads name theirs (gc knows it)
UNTRUSTED = 3  # exit status when the directory check found what another user could have planted


class BadRequest(Exception):
    pass


def answer(message: Dict[str, Any]) -> None:
    # A client that went away must not stop a submission half-made: the steps run on (their records
    # answer the client's next try), only the answer is lost.
    try:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
    except OSError:
        pass


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise BadRequest("{} is not text".format(what))
    return value


def _argv(value: Any, what: str) -> List[str]:
    if not isinstance(value, list) or not value:
        raise BadRequest("{} is not a command".format(what))
    return [_text(word, what) for word in value]


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest("{} is not a size".format(what))
    return value


def _inside(root: str, path: Any, what: str) -> str:
    path = _text(path, what)
    if not path.startswith(root + "/") or os.path.normpath(path) != path or "\n" in path:
        raise BadRequest("{} {!r} is not inside {}".format(what, path, root))
    return path


def _digest(value: Any) -> str:
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        raise BadRequest("{!r} is not a SHA-256".format(value))
    return value


def file_digest(path: str) -> Optional[str]:
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def run(argv: List[str], stdin: Optional[str], timeout: Optional[float]) -> Dict[str, Any]:
    """A step's command; never on our own stdin, which carries the files."""
    try:
        done = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=None if stdin is not None else subprocess.DEVNULL, timeout=timeout,
                              universal_newlines=True)
    except subprocess.TimeoutExpired:
        return {"status": None, "stdout": "", "stderr": "timed out after {} s".format(timeout)}
    except OSError as exc:
        return {"status": 127, "stdout": "", "stderr": str(exc)}
    return {"status": done.returncode, "stdout": done.stdout[-OUTPUT_LIMIT:], "stderr": done.stderr[-OUTPUT_LIMIT:]}


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".",
                                suffix=".part")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


class Cut(Exception):
    pass


def partial_of(final: str) -> str:
    """Where a store file's bytes gather until complete: kept across a cut, so the next try resumes."""
    return os.path.join(os.path.dirname(final), "." + os.path.basename(final) + PART_SUFFIX)


def resumable(final: str, size: int) -> int:
    """How many bytes of `final` an earlier, cut try left: a regular file of ours, not longer than whole."""
    try:
        found = os.lstat(partial_of(final))
    except OSError:
        return 0
    if not stat.S_ISREG(found.st_mode) or found.st_uid != os.getuid() or found.st_size > size:
        return 0
    return found.st_size


def receive(source: Any, final: str, size: int, digest: str, mode: int, offset: int = 0) -> bool:
    """Read `size - offset` bytes onto the partial file of `final` (whose first `offset` bytes an earlier
    try left); in place when the whole has SHA-256 `digest` (False, and nothing kept, when not). Raises
    Cut at an early end of input, keeping what arrived for the next try."""
    directory = os.path.dirname(final)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    partial = partial_of(final)
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if offset else os.O_TRUNC)
    hasher = hashlib.sha256()
    with os.fdopen(os.open(partial, flags, 0o600), "wb") as stream:
        if offset:
            if os.fstat(stream.fileno()).st_size != offset:
                raise Cut("the partial file of {} changed since it was measured".format(final))
            with open(partial, "rb") as earlier:
                for block in iter(lambda: earlier.read(BLOCK), b""):
                    hasher.update(block)
        left = size - offset
        while left:
            block = source.read(min(BLOCK, left))
            if not block:
                raise Cut("the request ended {} bytes before the end of {}".format(left, final))
            hasher.update(block)
            stream.write(block)
            left -= len(block)
    if hasher.hexdigest() != digest:
        os.unlink(partial)
        return False
    os.chmod(partial, mode)
    os.replace(partial, final)
    return True


def submit(step: Dict[str, Any]) -> Dict[str, Any]:
    """The round's submissions, then its finish step after them: the finish command names the arrays'
    ids as @ID0@, @ID1@, ... and its note the finish step's id as @FINISH@ (read with the scheduler's
    pattern, the same the client reads them with). Every command is the client's guarded one: a
    repeat answers from its record instead of submitting twice."""
    pattern = re.compile(_text(step.get("id"), "the id pattern"))
    arrays = [_argv(a, "a submission") for a in step.get("arrays", [])]
    choices = [_argv(a, "a finish submission") for a in step.get("finish", [])]
    note = _argv(step["note"], "the finish note") if step.get("note") else None
    out = {"arrays": [], "finish": None, "finish_errors": []}  # type: Dict[str, Any]
    ids = []
    for argv in arrays:
        done = run(argv, None, 300)
        out["arrays"].append(done)
        lines = done["stdout"].strip().splitlines()
        found = pattern.fullmatch(lines[-1].strip()) if done["status"] == 0 and lines else None
        if not found:
            out["failed"] = True
            return out
        ids.append(found.group("id"))
    marks = {"@ID{}@".format(i): job_id for i, job_id in enumerate(ids)}
    for argv in choices:
        done = run([_replace(word, marks) for word in argv], None, 300)
        lines = done["stdout"].strip().splitlines()
        found = pattern.fullmatch(lines[-1].strip()) if done["status"] == 0 and lines else None
        if not found:
            out["finish_errors"].append(done)
            continue
        out["finish"] = done
        if note:
            run([_replace(word, {"@FINISH@": found.group("id")}) for word in note], None, 60)
        break
    return out


def _replace(word: str, marks: Dict[str, str]) -> str:
    for mark, value in marks.items():
        word = word.replace(mark, value)
    return word


def run_steps(root: str, steps: List[Any]) -> None:
    results = []  # type: List[Dict[str, Any]]
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            raise BadRequest("step {} is not an object".format(index))
        if "run" in step:
            stdin = step.get("stdin")
            result = run(_argv(step["run"], "step {}".format(index)), None if stdin is None else _text(stdin, "stdin"),
                         step.get("timeout", 1800))
            results.append(result)
            if result["status"] not in step.get("ok", [0]):
                answer({"stopped": index, "results": results})
                return
        elif "write" in step:
            for path, text in step["write"]:
                write_atomic(_inside(root, path, "a job file"), _text(text, "a job file").encode("utf-8"))
            results.append({"status": 0})
        elif "submit" in step:
            result = submit(step["submit"])
            results.append(result)
            if result.get("failed"):
                answer({"stopped": index, "results": results})
                return
        else:
            raise BadRequest("step {} does nothing this helper knows".format(index))
    answer({"done": results})


def read_request(source: Any) -> Dict[str, Any]:
    line = source.readline(REQUEST_LIMIT + 1)
    if not line.endswith(b"\n"):
        raise BadRequest("no request (or one larger than {} bytes)".format(REQUEST_LIMIT))
    request = json.loads(line.decode("utf-8"))
    if not isinstance(request, dict) or request.get("protocol") != PROTOCOL:
        raise BadRequest("this helper speaks protocol {}; the request is not".format(PROTOCOL))
    root = _text(request.get("root"), "the root")
    if not root.startswith("/") or os.path.normpath(root) != root:
        raise BadRequest("the root {!r} is not an absolute, normal path".format(root))
    return request


def lacking_scripts(scripts_dir: str, offered: Dict[str, Any]) -> Dict[str, List[Any]]:
    """The offered scripts (name -> [sha256, size]) the directory lacks or holds other bytes of."""
    wanted = {}  # type: Dict[str, List[Any]]
    for name, (digest, size) in sorted(offered.items()):
        if not SCRIPT_NAME.fullmatch(name):
            raise BadRequest("{!r} is not a script name".format(name))
        if file_digest(os.path.join(scripts_dir, name)) != _digest(digest):
            wanted[name] = [digest, _count(size, name)]
    return wanted


def lacking_store(store_dir: str, offered: Dict[str, Any]) -> Dict[str, List[int]]:
    """The offered store files (sha256 -> size) the store does not hold: [size, bytes already here]."""
    wanted = {}  # type: Dict[str, List[int]]
    for digest, size in sorted(offered.items()):
        final = os.path.join(store_dir, _digest(digest)[:2], digest)
        if not os.path.isfile(final):
            wanted[digest] = [_count(size, digest), resumable(final, size)]
    return wanted


def install_manifest(scripts_dir: str, manifest: Any, installed: bool) -> None:
    """Written last: when it is there, every script before it is whole."""
    data = _text(manifest, "the manifest").encode("utf-8")
    path = os.path.join(scripts_dir, MANIFEST)
    if installed or file_digest(path) != hashlib.sha256(data).hexdigest():
        write_atomic(path, data)


def serve(source: Any) -> int:
    request = read_request(source)
    root = request["root"]
    checked = run(_argv(request.get("check"), "the directory check"), None, 300)
    if checked["status"] != 0 or checked["stdout"].strip():
        answer({"error": "untrusted" if checked["status"] == 0 else "check", "check": checked})
        return UNTRUSTED

    scripts = request.get("scripts") or {}
    scripts_dir = _inside(root, scripts["dir"], "the scripts directory") if scripts else ""
    wanted_scripts = lacking_scripts(scripts_dir, scripts.get("files") or {})
    store = request.get("store") or {}
    store_dir = _inside(root, store["dir"], "the store") if store else ""
    wanted_store = lacking_store(store_dir, store.get("files") or {})
    answer({"need": {"scripts": sorted(wanted_scripts), "store": sorted(wanted_store),
                     "from": {d: at for d, (_, at) in wanted_store.items() if at}}})

    bad = [name for name, (digest, size) in sorted(wanted_scripts.items())
           if not receive(source, os.path.join(scripts_dir, name), size, digest, 0o600)]
    # Read-only: a job's input is a hard link to the same inode, and must not change the store.
    bad += [digest for digest, (size, at) in sorted(wanted_store.items())
            if not receive(source, os.path.join(store_dir, digest[:2], digest), size, digest, 0o444, at)]
    if bad:
        answer({"error": "changed", "files": bad})
        return 1
    if scripts and scripts.get("manifest") is not None:
        install_manifest(scripts_dir, scripts["manifest"], bool(wanted_scripts))
    run_steps(root, request.get("steps") or [])
    return 0


def main() -> int:
    # The connection may drop while the scheduler is being asked: finish the submission all the same.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.umask(0o077)
    try:
        return serve(sys.stdin.buffer)
    except (BadRequest, ValueError, KeyError, TypeError) as exc:
        answer({"error": "request", "why": str(exc)})
        return 2
    except Cut as exc:
        answer({"error": "cut", "why": str(exc)})
        return 1
    except OSError as exc:
        answer({"error": "io", "why": str(exc)})
        return 1


if __name__ == "__main__":
    sys.exit(main())
