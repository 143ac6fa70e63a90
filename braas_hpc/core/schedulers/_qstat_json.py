"""A tolerant reader of PBS Pro's `qstat -f -F json`.

PBS servers in use print JSON that is not always valid: strings from a job's environment (Variable_List,
exported BASH_FUNC_* bodies), its account name or a comment can carry raw control characters, backslashes
that escape nothing (`\\'`, `\\,`), unescaped double quotes; an all-digit value can come out as a bare number
with leading zeros (`005`); older servers repeated `"Jobs":{` before every job, and output can end cut off.
One such job must not hide the others, so the text is read in three steps: as JSON; repaired (only what
is broken inside strings and bare words is changed); job by job, each block alone. A block that still does
not read gives its state lines only when they are unambiguous, or nothing (the caller reports it unknown).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import SchedulerError

READ_AS_JSON, REPAIRED, SALVAGED, UNREADABLE = "json", "repaired", "salvaged", "unreadable"
ENDED = frozenset({"F", "X"})  # job_state letters of an ended job or subjob


@dataclass(frozen=True)
class JobBlock:
    """One job of qstat's answer: its attributes as read, and how they could be read."""

    job_id: str
    attrs: Mapping[str, object] = field(default_factory=dict)
    how: str = READ_AS_JSON  # READ_AS_JSON, REPAIRED, SALVAGED (state lines only) or UNREADABLE
    conflicts: Mapping[str, tuple[object, ...]] = field(default_factory=dict)  # a key printed twice, differently
    why: str = ""  # what was wrong, for the user, when the block could not be read whole


class _Attrs(dict):  # type: ignore[type-arg]
    """A JSON object that remembers keys printed more than once with different values (the last one wins)."""

    conflicts: dict[str, tuple[object, ...]]


def _object(pairs: list[tuple[str, object]]) -> _Attrs:
    obj = _Attrs()
    obj.conflicts = {}
    for key, value in pairs:
        if key in obj and obj[key] != value:
            obj.conflicts[key] = (*obj.conflicts.get(key, (obj[key],)), value)
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object)

# Repair: the next place outside a string where something starts (a string, or a bare word), the next
# character inside a string that may need care, and what may follow a string's real closing quote.
_OUTSIDE = re.compile(r'"|[^\s,:{}\[\]"]+')
_IN_STRING = re.compile(r'["\\\x00-\x1f]')
_CLOSING = re.compile(r'\s*(?:[:}\]]|,\s*(?:["{}\[\]]|-?\d|true\b|false\b|null\b)|$)')
_JSON_WORD = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_SHORT_ESCAPES = frozenset('"\\/bfnrt')


def repair(text: str) -> str:
    """`text` with what PBS leaves broken made valid JSON: raw control characters in strings escaped, a
    backslash that escapes nothing kept as a backslash, a quote that does not end its string escaped, a
    bare word that is no JSON number or literal quoted. Valid JSON comes out unchanged."""
    out: list[str] = []
    pos = 0
    while (found := _OUTSIDE.search(text, pos)) is not None:
        out.append(text[pos:found.start()])
        word = found.group()
        if word == '"':
            pos = _repair_string(text, found.end(), out)
        else:
            out.append(word if _JSON_WORD.fullmatch(word) else json.dumps(word))
            pos = found.end()
    out.append(text[pos:])
    return "".join(out)


def _repair_string(text: str, pos: int, out: list[str]) -> int:
    """Copy the string that starts at `pos` (after its opening quote) to `out`, repaired and closed;
    return where reading goes on. A string cut off by the end of the text is closed there."""
    out.append('"')
    while (found := _IN_STRING.search(text, pos)) is not None:
        out.append(text[pos:found.start()])
        char, pos = found.group(), found.end()
        if char == '"':
            if _CLOSING.match(text, pos):
                out.append('"')
                return pos
            out.append('\\"')  # a quote inside the value that PBS did not escape
        elif char == "\\":
            pos = _repair_escape(text, pos, out)
        else:
            out.append(f"\\u{ord(char):04x}")  # a raw newline, tab, escape character...
    out.append(text[pos:] + '"')
    return len(text)


def _repair_escape(text: str, pos: int, out: list[str]) -> int:
    """After a backslash at pos-1: a valid escape is kept; anything else keeps the backslash as a character.
    A backslash right before the string's closing quote is the value's last character, not an escape."""
    following = text[pos:pos + 1]
    if following == '"' and _CLOSING.match(text, pos + 1):
        out.append("\\\\")
        return pos
    if following in _SHORT_ESCAPES or (following == "u" and _HEX4.fullmatch(text[pos + 1:pos + 5])):
        out.append("\\" + following)
        return pos + 1
    out.append("\\\\")
    return pos


# A job's block starts on its own line: `"<id>":{` (ids: 123.server, 123[].server, 123[4].server).
_JOB_HEAD = re.compile(r'^[ \t]*"(\d+(?:\[\d*\])?(?:\.[^"\s]*)?)"[ \t]*:[ \t]*\{', re.MULTILINE)
# The state lines of a block that cannot be read, as PBS prints them: one attribute per line.
_STATE_LINES = {
    "job_state": re.compile(r'^[ \t]*"job_state"[ \t]*:[ \t]*"([A-Z])"[ \t]*,?[ \t]*$', re.MULTILINE),
    "Exit_status": re.compile(r'^[ \t]*"Exit_status"[ \t]*:[ \t]*(-?\d+)[ \t]*,?[ \t]*$', re.MULTILINE),
    "substate": re.compile(r'^[ \t]*"substate"[ \t]*:[ \t]*(\d+)[ \t]*,?[ \t]*$', re.MULTILINE),
}


def read_jobs(stdout: str) -> list[JobBlock]:
    """Every job in qstat's answer, each as well as it can be read. No JSON at all (an error message
    on stdout): SchedulerError with the text. No `Jobs` (nothing matched): no job."""
    start = stdout.find("{")
    if start < 0:
        if stdout.strip():
            raise SchedulerError(f"qstat printed no JSON: {stdout[:200]!r}")
        return []
    text = stdout[start:]  # a server that mixes a table into its JSON prints the table first
    heads = list(_JOB_HEAD.finditer(text))
    for how in (READ_AS_JSON, REPAIRED):  # repaired only when it does not read as it is
        jobs = _jobs_of(_decode(text if how == READ_AS_JSON else repair(text)))
        # Read whole only if it holds every job block the text has (a brace closed too early leaves jobs
        # outside "Jobs"; a repair gone wrong merges blocks). Text not laid out one key a line has no blocks.
        if jobs is not None and (not heads or sorted(jobs) == sorted(head.group(1) for head in heads)):
            return [JobBlock(job_id, attrs, how, attrs.conflicts) for job_id, attrs in jobs.items()]
    if not heads:
        raise SchedulerError(f"qstat printed JSON that cannot be read, with no job in it: {text[:200]!r}")
    ends = [head.start() for head in heads[1:]] + [len(text)]
    cut_off = not text.rstrip().endswith("}")  # qstat's JSON always ends with its closing brace
    blocks = [_read_block(head.group(1), text[head.end() - 1:end], cut_off and end == len(text))
              for head, end in zip(heads, ends, strict=True)]
    return _one_per_job(blocks)


def _jobs_of(whole: object) -> dict[str, _Attrs] | None:
    """The `Jobs` object of a whole answer, if it is one with a JSON object per job and no key twice."""
    if not isinstance(whole, _Attrs) or whole.conflicts:
        return None
    jobs = whole.get("Jobs", _object([]))
    if not isinstance(jobs, _Attrs) or jobs.conflicts or not all(isinstance(a, _Attrs) for a in jobs.values()):
        return None
    return jobs


def _decode(text: str) -> object:
    try:
        return _DECODER.raw_decode(text)[0]
    except json.JSONDecodeError:
        return None


def _read_block(job_id: str, text: str, cut_off: bool) -> JobBlock:
    """One job's block alone (from its opening brace): as JSON, repaired, else its state lines."""
    for how in (READ_AS_JSON, REPAIRED):
        attrs = _decode(text if how == READ_AS_JSON else repair(text))
        if isinstance(attrs, _Attrs):
            return JobBlock(job_id, attrs, how, attrs.conflicts)
    return salvage(job_id, text, cut_off)


def salvage(job_id: str, text: str, cut_off: bool = False) -> JobBlock:
    """The state of a job whose block is not JSON even repaired, from its own state lines: each must be
    there at most once, job_state at least. A block cut off by the end of the output loses its last,
    partial line, and an ended job in it needs its Exit_status (it may have been cut before it)."""
    if cut_off:
        text = text[:text.rfind("\n") + 1]
    found: dict[str, object] = {}
    for key, pattern in _STATE_LINES.items():
        values = pattern.findall(text)
        if len(values) > 1:
            return JobBlock(job_id, how=UNREADABLE, why=f"its {key} is printed {len(values)} times")
        if values:
            found[key] = values[0] if key == "job_state" else int(values[0])
    if "job_state" not in found:
        return JobBlock(job_id, how=UNREADABLE, why="cut off before its job_state" if cut_off else "no job_state")
    if cut_off and found["job_state"] in ENDED and "Exit_status" not in found:
        return JobBlock(job_id, how=UNREADABLE, why="cut off before its Exit_status")
    return JobBlock(job_id, found, SALVAGED, why="only its state lines could be read")


def _one_per_job(blocks: list[JobBlock]) -> list[JobBlock]:
    """A job printed twice (servers that repeated a block) counts once; twice differently: unreadable."""
    by_id: dict[str, JobBlock] = {}
    for block in blocks:
        seen = by_id.get(block.job_id)
        if seen is None or (seen.attrs == block.attrs and seen.how == block.how):
            by_id[block.job_id] = seen or block
        else:
            by_id[block.job_id] = JobBlock(block.job_id, how=UNREADABLE, why="printed twice, differently")
    return list(by_id.values())
