#!/usr/bin/python3.11
"""pbs-standin: `qsub`, `qstat` and `qdel` with PBS Professional's syntax, run by Slurm underneath.

This is NOT PBS Professional. It is a test double for the braas-hpc testbed (see README.md beside
this file): it parses PBS Pro command lines and `#PBS` directives strictly, submits each job to
the real Slurm of the testbed with `sbatch`, and reports Slurm's view of the jobs in PBS Pro's
shapes (job ids, `qstat -f -F json`, state letters, `Exit_status`).

One file, stdlib only, run by Debian's python3.11. Installed with symlinks named qsub, qstat and
qdel: the name it is called by picks the command (`pbs_standin.py qsub ...` works, too). The
hidden command `_start_job SPEC` is what Slurm runs for every job and subjob: it builds the PBS
job environment and runs the user's script.

Job ids are `<slurm job id>.pbs-standin`, arrays `<slurm array job id>[].pbs-standin`, subjobs
`<id>[<index>].pbs-standin`, so mapping a PBS id to Slurm needs no table. What qstat needs
beyond Slurm (the PBS attributes as submitted) is kept in ~/.pbs-standin/jobs/<id>.json.
"""

from __future__ import annotations

import getopt
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SERVER = "pbs-standin"
PBS_VERSION = "2022.1.1-standin"  # the PBS Pro release ALCF documents; the suffix says what this is

# ALCF's queue names; all run in the testbed's GPU partition.
# Polaris's queues (docs.alcf.anl.gov/polaris/running-jobs, read 2026-12-07) and Aurora's `visualization`.
# `capacity` is in no ALCF queue table read on that day: it stays accepted only while older presets still name it.
QUEUE_PARTITION = {
    q: "qgpu" for q in ("debug", "debug-scaling", "prod", "preemptable", "capacity", "demand", "visualization")
}
ROUTING_QUEUES = ("prod",)  # prod routes jobs to small/medium/large at ALCF: `qstat -Q` says Route
DEFAULT_QUEUE = "prod"  # ALCF's default queue
DEFAULT_FILESYSTEMS = "home:eagle:flare:grand"
MAX_JOB_NAME = 236  # PBS_MAXJOBNAME
MAX_ARRAY_SIZE = 10000  # the PBS server's default max_array_size
STATE_DIR_NAME = ".pbs-standin"
HISTORY_SECONDS = 14 * 86400  # PBS's default job_history_duration: two weeks

# PBS Pro's exit codes for the common errors: pbs_errno modulo 256.
EXIT_UNKNOWN_JOB = 153  # PBSE_UNKJOBID 15001
EXIT_JOB_FINISHED = 35  # PBSE_HISTJOBID 15139
EXIT_USAGE = 2

# Special Exit_status values of PBS Pro (src/include/job.h).
JOB_EXEC_FAIL1 = -1
JOB_EXEC_KILL_MEM = -27
JOB_EXEC_KILL_WALLTIME = -29
SIGNAL_BASE = 256  # PBS reports a job killed by signal N as 256 + N (271 for SIGTERM)

QSUB_USAGE = """\
usage: qsub [-A account_string] [-C directive_prefix] [-e path] [-h] [-j oe|eo|n] [-J X-Y[:Z][%max]]
        [-k keep] [-l resource_list] [-m mail_options] [-M user_list] [-N jobname] [-o path]
        [-p priority] [-P project] [-q queue] [-r y|n] [-S path] [-v variable_list] [-V]
        [-W depend=type:jobid[:jobid...]] [-z] script
       qsub --version
(pbs-standin: PBS Pro syntax over Slurm; not PBS Professional)"""
QSTAT_USAGE = """\
usage: qstat [-f [-F json]] [-J] [-t] [-x] [-w] [-E] [job_identifier ...]
       qstat -Q [queue ...]
       qstat --version
(pbs-standin: PBS Pro syntax over Slurm; not PBS Professional)"""
QDEL_USAGE = """\
usage: qdel [-W force] job_identifier ...
       qdel --version
(pbs-standin: PBS Pro syntax over Slurm; not PBS Professional)"""


class PbsError(Exception):
    """A failed command: `<cmd>: <message>` on stderr, then exit with `status`."""

    def __init__(self, message: str, status: int = 1, usage: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.usage = usage


def illegal(letter: str) -> PbsError:
    # The client-side syntax error of PBS's qsub: message, usage, exit 2.
    return PbsError(f"illegal -{letter} value", EXIT_USAGE, usage=True)


def bad_value(attribute: str) -> PbsError:
    # The server-side rejection of a value (PBSE_BADATVAL).
    return PbsError(f"Illegal attribute or resource value {attribute}")


# --------------------------------------------------------------------------------------------
# site policy


@dataclass(frozen=True)
class Site:
    """What the stand-in enforces beyond PBS Pro itself, from the environment.

    PBS_STANDIN_SITE=alcf (default) adds ALCF's submission rules (account, walltime and
    filesystems required, `-k doe` only, arrays need `-r y`); `pbspro` checks PBS Pro's syntax only.
    """

    alcf: bool
    filesystems: tuple[str, ...]
    state_dir: Path

    @classmethod
    def from_env(cls) -> Site:
        name = os.environ.get("PBS_STANDIN_SITE", "alcf")
        if name not in ("alcf", "pbspro"):
            raise PbsError(f"PBS_STANDIN_SITE must be alcf or pbspro, not {name!r}")
        fs = os.environ.get("PBS_STANDIN_FILESYSTEMS", DEFAULT_FILESYSTEMS)
        state = os.environ.get("PBS_STANDIN_DIR") or str(Path.home() / STATE_DIR_NAME)
        return cls(alcf=name == "alcf", filesystems=tuple(x for x in fs.split(":") if x), state_dir=Path(state))

    @property
    def jobs(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def spool(self) -> Path:
        return self.state_dir / "spool"

    @property
    def aux(self) -> Path:
        return self.state_dir / "aux"


# --------------------------------------------------------------------------------------------
# small helpers


def run(cmd: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise PbsError(f"cannot run {cmd[0]}: {exc.strerror} (is Slurm installed and on PATH?)") from exc
    except subprocess.TimeoutExpired as exc:
        raise PbsError(f"{cmd[0]} did not answer within {timeout:.0f} s") from exc


def slurm_error(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr or proc.stdout).strip().replace("sbatch: error: ", "").replace("scancel: error: ", "")
    return " ".join(text.split()) or f"exit status {proc.returncode}"


def user_name() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def pbs_time(epoch: float) -> str:
    """PBS's timestamps are ctime(3) style, day padded with a space: "Fri Nov  4 11:04:12 2022"."""
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(epoch))


def hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def compress_indices(indices: Iterable[int]) -> str:
    """[1, 2, 3, 5] -> "1-3,5", PBS's notation for array_indices_remaining."""
    out: list[str] = []
    run_start = prev = None
    for i in sorted(indices):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if run_start is not None:
            out.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
        run_start = prev = i
    if run_start is not None:
        out.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
    return ",".join(out) or "-"


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# job identifiers

JOB_ID_RE = re.compile(r"^(\d+)(?:\[(\d*)\])?(?:\.([A-Za-z0-9.-]+))?(?:@([A-Za-z0-9.-]+))?$")


@dataclass(frozen=True)
class JobRef:
    """A job id as given on the command line: `123`, `123[]`, `123[4]`, with `.server` or not."""

    text: str
    seq: int
    index: int | None  # a subjob
    array: bool  # written with []
    foreign: bool  # names a server that is not this one


def parse_job_id(text: str) -> JobRef:
    m = JOB_ID_RE.match(text)
    if not m:
        raise PbsError(f"illegally formed job identifier: {text}")
    seq, index, server, at = m.groups()
    servers = [s for s in (server, at) if s]
    foreign = any(s != SERVER and not s.startswith(SERVER + ".") for s in servers)
    brackets = "[" in text
    return JobRef(text, int(seq), int(index) if index else None, brackets and not index, foreign)


def job_id(seq: int, index: int | None = None, array: bool = False) -> str:
    if index is not None:
        return f"{seq}[{index}].{SERVER}"
    return f"{seq}[].{SERVER}" if array else f"{seq}.{SERVER}"


def ref_name(ref: JobRef) -> str:
    """The canonical id of a reference, for messages (PBS adds the server name)."""
    if ref.foreign:
        return ref.text
    return job_id(ref.seq, ref.index, ref.array)


# --------------------------------------------------------------------------------------------
# qsub: options as PBS's getopt sees them

QSUB_GETOPT = "A:C:e:fhj:J:k:l:m:M:N:o:p:P:q:r:S:v:VW:z" + "a:c:GIR:u:X"
QSUB_UNSUPPORTED = {"-a", "-c", "-G", "-I", "-R", "-u", "-X"}  # real PBS options this stand-in refuses
NAME_CHARS = set(string.ascii_letters + string.digits + "-_+.")  # check_job_name() of OpenPBS
PROJECT_FORBIDDEN = set('/[]";:|<>+,?*')
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Options:
    """qsub options from one source (the command line or the directives of the script)."""

    values: dict[str, str] = field(default_factory=dict)  # single-valued options by letter
    resources: dict[str, str] = field(default_factory=dict)  # -l name=value
    variables: list[tuple[str, str | None]] = field(default_factory=list)  # -v, in order
    attributes: dict[str, str] = field(default_factory=dict)  # -W name=value
    flags: set[str] = field(default_factory=set)  # h V z f
    operands: list[str] = field(default_factory=list)

    def overlay(self, other: Options) -> Options:
        """self with `other` on top: the command line wins over directives, per resource."""
        return Options(
            values={**self.values, **other.values},
            resources={**self.resources, **other.resources},
            variables=[*self.variables, *other.variables],
            attributes={**self.attributes, **other.attributes},
            flags=self.flags | other.flags,
            operands=other.operands,
        )


def parse_qsub_argv(argv: list[str], directive: bool = False) -> Options:
    try:
        pairs, operands = getopt.getopt(argv, QSUB_GETOPT)
    except getopt.GetoptError as exc:
        raise getopt_error(exc) from exc
    opts = Options(operands=operands)
    for flag, value in pairs:
        if flag in QSUB_UNSUPPORTED:
            raise PbsError(f"option {flag} is not supported by pbs-standin", EXIT_USAGE, usage=True)
        if directive and flag == "-C":
            raise PbsError("-C cannot be used as a PBS directive", EXIT_USAGE, usage=True)
        apply_option(opts, flag[1], value)
    return opts


def getopt_error(exc: getopt.GetoptError) -> PbsError:
    # The wording of GNU getopt, which PBS's commands use.
    if "requires argument" in exc.msg:
        return PbsError(f"option requires an argument -- '{exc.opt}'", EXIT_USAGE, usage=True)
    return PbsError(f"invalid option -- '{exc.opt}'", EXIT_USAGE, usage=True)


def apply_option(opts: Options, letter: str, value: str) -> None:
    if letter == "l":
        for name, val in split_resources(value):
            check_resource_syntax(name, val)
            opts.resources[name] = val
    elif letter == "v":
        opts.variables.extend(parse_variable_list(value))
    elif letter == "W":
        for name, val in split_resources(value, letter="W"):
            opts.attributes[name] = check_w_attribute(name, val)
    elif letter in "hVzf":
        opts.flags.add(letter)
    else:
        check = VALUE_CHECKS.get(letter)
        opts.values[letter] = check(value) if check else value


def split_quoted(text: str, sep: str) -> list[str]:
    """Split at `sep` outside single or double quotes (PBS lets values with commas be quoted)."""
    parts, buf, quote = [], [], ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if quote:
        raise PbsError("unbalanced quotes in option value", EXIT_USAGE, usage=True)
    parts.append("".join(buf))
    return parts


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def split_resources(value: str, letter: str = "l") -> list[tuple[str, str]]:
    """`a=1,b=x:y` -> [("a", "1"), ("b", "x:y")]; every item must be name=value."""
    items = []
    for item in split_quoted(value, ","):
        name, eq, val = item.strip().partition("=")
        if not eq or not name or not val or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise illegal(letter)
        items.append((name, unquote(val)))
    return items


def parse_variable_list(value: str) -> list[tuple[str, str | None]]:
    """`-v a=1,"b='x,y'",c` -> [("a", "1"), ("b", "x,y"), ("c", None)] (None: take it from qsub's env)."""
    out: list[tuple[str, str | None]] = []
    for item in split_quoted(value, ","):
        item = unquote(item.strip())
        name, eq, val = item.partition("=")
        if not ENV_NAME_RE.match(name):
            raise illegal("v")
        out.append((name, unquote(val) if eq else None))
    return out


def check_name(value: str) -> str:
    # OpenPBS check_job_name(name, chk_alpha=1): <= 236 chars, first alphabetic, [A-Za-z0-9-_+.].
    if not value or len(value) > MAX_JOB_NAME or value[0] not in string.ascii_letters:
        raise illegal("N")
    if not set(value) <= NAME_CHARS:
        raise illegal("N")
    return value


def check_pattern(letter: str, pattern: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise illegal(letter)
        return value

    return check


def check_letters(letter: str, allowed: str, alone: str) -> Callable[[str], str]:
    """Any combination of `allowed` without repeats, or `alone` by itself (-k, -m)."""

    def check(value: str) -> str:
        ok = value == alone or (bool(value) and set(value) <= set(allowed) and len(set(value)) == len(value))
        if not ok:
            raise illegal(letter)
        return value

    return check


def check_mail_points(value: str) -> str:
    value = check_letters("m", "abej", "n")(value)
    if value != "n" and not set(value) & set("abe"):  # j needs one of a, b, e
        raise illegal("m")
    return value


def check_priority(value: str) -> str:
    if not re.fullmatch(r"[+-]?\d+", value) or not -1024 <= int(value) <= 1023:
        raise illegal("p")
    return value


def check_project(value: str) -> str:
    if not value or set(value) & PROJECT_FORBIDDEN:
        raise illegal("P")
    return value


def check_array(value: str) -> str:
    parse_array(value)
    return value


def check_path(letter: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        _host, _sep, path = value.partition(":") if ":" in value else ("", "", value)
        if not path.strip():
            raise illegal(letter)
        return value

    return check


VALUE_CHECKS: dict[str, Callable[[str], str]] = {
    "A": check_pattern("A", r"\S+"),
    "C": lambda v: v,
    "e": check_path("e"),
    "o": check_path("o"),
    "j": check_pattern("j", r"oe|eo|n"),
    "J": check_array,
    "k": check_letters("k", "doe", "n"),
    "m": check_mail_points,
    "M": check_pattern("M", r"[A-Za-z0-9._+-]+(@[A-Za-z0-9.-]+)?(,[A-Za-z0-9._+-]+(@[A-Za-z0-9.-]+)?)*"),
    "N": check_name,
    "p": check_priority,
    "P": check_project,
    "q": check_pattern("q", r"[A-Za-z][A-Za-z0-9_-]*(@[A-Za-z0-9.-]+)?|@[A-Za-z0-9.-]+"),
    "r": check_pattern("r", r"[yn]"),
    "S": check_pattern("S", r"/\S*"),
}


# --------------------------------------------------------------------------------------------
# qsub: resources and other values with structure

JOB_WIDE_RESOURCES = ("select", "place", "walltime", "filesystems")
CHUNK_INT = ("ncpus", "ngpus", "mpiprocs", "ompthreads")
CHUNK_SIZE = ("mem", "vmem")
CHUNK_STR = ("system", "host", "vnode", "gputype", "tier0", "tier1", "arch")
SIZE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40, "pb": 1 << 50}
SIZE_UNITS |= {"w": 8, "kw": 8 << 10, "mw": 8 << 20, "gw": 8 << 30, "tw": 8 << 40, "pw": 8 << 50}
PLACE_ARRANGEMENT = ("free", "pack", "scatter", "vscatter")
PLACE_SHARING = ("excl", "shared", "exclhost")
ARRAY_RE = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?$")
DEPEND_TYPES = ("after", "afterok", "afternotok", "afterany")


def check_resource_syntax(name: str, value: str) -> None:
    if name in JOB_WIDE_RESOURCES:
        return
    if name in (*CHUNK_INT, *CHUNK_SIZE, *CHUNK_STR, "nodes", "nodect"):
        raise PbsError(
            f"job-wide resource {name!r} is not supported by pbs-standin; request it in a chunk: -l select=N:{name}=..."
        )
    raise PbsError(f"Unknown resource: {name}")


def parse_walltime(value: str) -> int:
    """PBS durations: [[hours:]minutes:]seconds[.fraction]; fields are not range-checked."""
    m = re.fullmatch(r"(\d+)(?::(\d+))?(?::(\d+))?(?:\.\d+)?", value)
    if not m:
        raise bad_value("Resource_List.walltime")
    fields = [int(f) for f in m.groups() if f is not None]
    seconds = 0
    for f in fields:
        seconds = seconds * 60 + f
    return seconds


def parse_size(value: str, attribute: str) -> int:
    m = re.fullmatch(r"(\d+)([kmgtp]?[bw])?", value.lower())
    if not m:
        raise bad_value(attribute)
    return int(m.group(1)) * SIZE_UNITS[m.group(2) or ""]


@dataclass(frozen=True)
class Chunk:
    """One `-l select=N:res=val:...` statement (a single chunk type)."""

    count: int
    ints: dict[str, int]
    sizes: dict[str, int]
    strings: dict[str, str]

    @property
    def ncpus(self) -> int:
        return self.ints.get("ncpus", 1)

    @property
    def ngpus(self) -> int:
        return self.ints.get("ngpus", 0)


def parse_select(value: str) -> Chunk:
    if "+" in value:
        raise PbsError("select statements with several chunk types (+) are not supported by pbs-standin")
    parts = value.split(":")
    count = 1
    if parts[0].isdigit():
        count = int(parts.pop(0))
    if count < 1:
        raise bad_value("Resource_List.select")
    ints: dict[str, int] = {}
    sizes: dict[str, int] = {}
    strings: dict[str, str] = {}
    for part in parts:
        name, eq, val = part.partition("=")
        if not eq or not val:
            raise bad_value("Resource_List.select")
        add_chunk_resource(name, val, ints, sizes, strings)
    return Chunk(count, ints, sizes, strings)


def add_chunk_resource(
    name: str, val: str, ints: dict[str, int], sizes: dict[str, int], strings: dict[str, str]
) -> None:
    if name in CHUNK_INT:
        if not val.isdigit():
            raise bad_value(f"Resource_List.{name}")
        ints[name] = int(val)
    elif name in CHUNK_SIZE:
        sizes[name] = parse_size(val, f"Resource_List.{name}")
    elif name in CHUNK_STR:
        strings[name] = val
    else:
        raise PbsError(f"Unknown resource: {name}")


def place_kind(part: str) -> str:
    if part in PLACE_ARRANGEMENT:
        return "arrangement"
    if part in PLACE_SHARING:
        return "sharing"
    return "group" if re.fullmatch(r"group=[A-Za-z_][A-Za-z0-9_]*", part) else ""


def check_place(value: str) -> str:
    """[arrangement][:sharing][:group=resource], each at most once, no leading colon."""
    seen: set[str] = set()
    for part in value.split(":"):
        kind = place_kind(part)
        if not kind or kind in seen:
            raise bad_value("Resource_List.place")
        seen.add(kind)
    return value


def check_filesystems(value: str, site: Site) -> str:
    names = value.split(":")
    if not all(names):
        raise bad_value("Resource_List.filesystems")
    unknown = [n for n in names if n not in site.filesystems]
    if unknown:
        raise PbsError(
            f"Resource: filesystems: unknown filesystem {unknown[0]!r} (valid: {', '.join(site.filesystems)})"
        )
    return value


@dataclass(frozen=True)
class ArrayRange:
    start: int
    end: int
    step: int
    max_run: int | None

    @property
    def indices(self) -> range:
        return range(self.start, self.end + 1, self.step)

    @property
    def submitted(self) -> str:
        """array_indices_submitted: the range as given, without the %max part."""
        return f"{self.start}-{self.end}" + (f":{self.step}" if self.step != 1 else "")

    @property
    def slurm(self) -> str:
        return f"{self.start}-{self.end}:{self.step}" + (f"%{self.max_run}" if self.max_run else "")

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "step": self.step, "max_run": self.max_run}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArrayRange:
        return cls(data["start"], data["end"], data["step"], data.get("max_run"))


def parse_array(value: str) -> ArrayRange:
    """-J X-Y[:Z][%max]: PBS rejects a range with fewer than two indices ("-J 1-1")."""
    m = ARRAY_RE.match(value)
    if not m:
        raise illegal("J")
    start, end = int(m.group(1)), int(m.group(2))
    step = int(m.group(3)) if m.group(3) else 1
    max_run = int(m.group(4)) if m.group(4) else None
    if step < 1 or max_run == 0 or len(range(start, end + 1, step)) < 2:
        raise illegal("J")
    return ArrayRange(start, end, step, max_run)


def check_w_attribute(name: str, value: str) -> str:
    if name != "depend":
        raise PbsError(f"-W {name}= is not supported by pbs-standin (only depend=)", EXIT_USAGE, usage=True)
    for item in value.split(","):
        kind, _colon, ids = item.partition(":")
        if kind in ("before", "beforeok", "beforenotok", "beforeany", "on", "runone"):
            raise PbsError(f"dependency type {kind!r} is not supported by pbs-standin", EXIT_USAGE, usage=True)
        if kind not in DEPEND_TYPES or not ids:
            raise illegal("W")
        for text in ids.split(":"):
            if not JOB_ID_RE.match(text):
                raise illegal("W")
    return value


def slurm_dependency(value: str) -> str:
    """afterok:12.pbs-standin:13[] -> afterok:12:13 (an array id covers all its tasks in Slurm)."""
    out = []
    for item in value.split(","):
        kind, _colon, ids = item.partition(":")
        targets = []
        for text in ids.split(":"):
            ref = parse_job_id(text)
            if ref.foreign:
                raise PbsError(f"Unknown Job Id {text}", EXIT_UNKNOWN_JOB)
            targets.append(f"{ref.seq}_{ref.index}" if ref.index is not None else str(ref.seq))
        out.append(f"{kind}:{':'.join(targets)}")
    return ",".join(out)


# --------------------------------------------------------------------------------------------
# qsub: the script and its directives


def read_directives(script: Path, prefix: str) -> list[list[str]]:
    """The argv of every `#PBS` line before the first executable line, as PBS's qsub reads them."""
    if not prefix:  # -C "" turns directive scanning off
        return []
    lines = []
    for raw in script.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not line.startswith(prefix)):
            continue  # blank lines and comments (including the #! line) do not end the directives
        if not line.startswith(prefix):
            break
        rest = line[len(prefix) :]
        if rest and not rest[0].isspace():
            continue  # "#PBSfoo" is a comment, not a directive
        try:
            lines.append(shlex.split(rest, comments=True))
        except ValueError as exc:
            raise PbsError(f"directive error: {line} ({exc})", EXIT_USAGE) from exc
    return lines


def directive_options(script: Path, prefix: str) -> Options:
    merged = Options()
    for argv in read_directives(script, prefix):
        opts = parse_qsub_argv(argv, directive=True)
        if opts.operands:
            raise PbsError(f"directive error: unexpected {opts.operands[0]!r} in a #PBS line", EXIT_USAGE)
        merged = merged.overlay(opts)
    return merged


# --------------------------------------------------------------------------------------------
# qsub: from options to a job


@dataclass
class Submission:
    """Everything qsub decided, before it becomes an sbatch command and a record."""

    script: Path
    workdir: Path
    name: str
    queue: str
    account: str | None
    chunk: Chunk
    select: str
    place: str | None
    walltime: int | None
    filesystems: str | None
    array: ArrayRange | None
    rerunable: bool
    join: str
    keep: str
    variables: dict[str, str]
    opts: Options
    argv: list[str]


def build_submission(argv: list[str], site: Site) -> Submission:
    cmdline = parse_qsub_argv(argv)
    if len(cmdline.operands) != 1 or cmdline.operands[0] == "-":
        raise PbsError(
            "pbs-standin needs exactly one job script as the last argument (no stdin or -- executable)",
            EXIT_USAGE,
            usage=True,
        )
    script = Path(cmdline.operands[0])
    if not script.is_file():
        raise PbsError(f"script file:: No such file or directory: {script}")
    prefix = cmdline.values.get("C", os.environ.get("PBS_DPREFIX", "#PBS"))
    opts = directive_options(script, prefix).overlay(cmdline)
    return submission_from(opts, script, site, argv)


def submission_from(opts: Options, script: Path, site: Site, argv: list[str]) -> Submission:
    v = opts.values
    res = opts.resources
    queue = resolve_queue(v.get("q", DEFAULT_QUEUE))
    array = parse_array(v["J"]) if "J" in v else None
    if array and len(array.indices) > MAX_ARRAY_SIZE:
        raise PbsError("Array job exceeds server or queue size limit")
    check_site_policy(opts, site, array)
    select = res.get("select", "1:ncpus=1")
    return Submission(
        script=script.resolve(),
        workdir=Path.cwd(),
        name=v.get("N", script.name),
        queue=queue,
        account=v.get("A"),
        chunk=parse_select(select),
        select=select,
        place=check_place(res["place"]) if "place" in res else None,
        walltime=parse_walltime(res["walltime"]) if "walltime" in res else None,
        filesystems=check_filesystems(res["filesystems"], site) if "filesystems" in res else None,
        array=array,
        rerunable=array is not None or v.get("r", "y") == "y",  # "Job arrays are always rerunnable"
        join=v.get("j", "n"),
        keep=v.get("k", "doe" if site.alcf else "n"),
        variables=job_variables(opts, queue),
        opts=opts,
        argv=argv,
    )


def resolve_queue(destination: str) -> str:
    queue, _at, server = destination.partition("@")
    if server and server != SERVER and not server.startswith(SERVER + "."):
        raise PbsError(f"Unknown host: {server}")  # there is only this one server
    queue = queue or DEFAULT_QUEUE
    if queue not in QUEUE_PARTITION:
        raise PbsError("Unknown queue")
    return queue


def check_site_policy(opts: Options, site: Site, array: ArrayRange | None) -> None:
    """ALCF's rules on top of PBS Pro (their qsub hooks); the messages are ALCF's where known."""
    if not site.alcf:
        return
    if "A" not in opts.values:
        raise PbsError("Account_Name is required to be set.")
    if "walltime" not in opts.resources:
        raise PbsError("Resource: walltime is required to be set.")
    if "filesystems" not in opts.resources:
        raise PbsError("Resource: filesystems is required to be set.")
    if "k" in opts.values and set(opts.values["k"]) != set("doe"):
        raise PbsError("Keep_Files must be doe: output is written directly to its destination at this site.")
    if array is not None and opts.values.get("r") != "y":
        # Modelled on ALCF (per the stand-in's brief); PBS Pro itself makes arrays rerunnable.
        raise PbsError("Rerunable is required to be set to y (-r y) for job arrays.")


def job_variables(opts: Options, queue: str) -> dict[str, str]:
    """Variable_List: PBS_O_* from qsub's environment, then -V, then -v (later wins)."""
    env = os.environ
    out = {f"PBS_O_{k}": env[k] for k in ("HOME", "LANG", "LOGNAME", "PATH", "MAIL", "SHELL", "TZ") if k in env}
    out["PBS_O_WORKDIR"] = str(Path.cwd())
    out["PBS_O_HOST"] = socket.gethostname()
    out["PBS_O_SYSTEM"] = os.uname().sysname
    out["PBS_O_QUEUE"] = queue
    if "V" in opts.flags:
        out.update({k: v for k, v in env.items() if ENV_NAME_RE.match(k) and not k.startswith("SLURM_")})
    for name, value in opts.variables:
        if value is None:
            value = env.get(name)
            if value is None:
                continue  # PBS exports an unset variable as nothing
        out[name] = value
    return out


# --------------------------------------------------------------------------------------------
# qsub: output paths


def resolve_path(raw: str, workdir: Path) -> Path:
    """[host:]path; relative paths are relative to qsub's directory, or to HOME after a host."""
    host, colon, path = raw.partition(":") if ":" in raw else ("", "", raw)
    base = Path.home() if colon and host else workdir
    return base / Path(path).expanduser()


def slurm_escape(path: str) -> str:
    # Slurm expands %-patterns in --output/--error; a literal % must be doubled.
    return path.replace("%", "%%")


def stream_paths(sub: Submission) -> tuple[str, str]:
    """(stdout, stderr) for sbatch, with Slurm's %j/%A/%a where PBS puts the job id and index.

    PBS's defaults: <name>.o<seq> (subjobs <name>.o<seq>.<index>) in qsub's directory; a
    directory as -o/-e gets <job id>.OU/.ER; ^array_index^ in a path becomes the index.
    """
    seq = "%A" if sub.array else "%j"
    suffix = ".%a" if sub.array else ""
    jid = "%A[%a]" if sub.array else "%j"
    paths = []
    for letter, kind, default_ext in (("o", "o", "OU"), ("e", "e", "ER")):
        raw = sub.opts.values.get(letter)
        if raw is None:
            path = slurm_escape(str(sub.workdir / sub.name)) + f".{kind}{seq}{suffix}"
        else:
            target = resolve_path(raw, sub.workdir)
            if raw.endswith("/") or target.is_dir():
                path = slurm_escape(str(target)) + f"/{jid}.{SERVER}.{default_ext}"
            else:
                path = slurm_escape(str(target)).replace("^array_index^", "%a")
        paths.append(path)
    return paths[0], paths[1]


def display_path(slurm_path: str, seq: int, index: int | None) -> str:
    """The Output_Path/Error_Path qstat shows: host:path with the ids filled in."""
    idx = str(index) if index is not None else "^array_index^"
    text = slurm_path.replace("%j", str(seq)).replace("%A", str(seq)).replace("%a", idx).replace("%%", "%")
    return f"{socket.gethostname()}:{text}"


# --------------------------------------------------------------------------------------------
# qsub: sbatch and the record


def sbatch_argv(sub: Submission, spec: Path, out: str, err: str) -> list[str]:
    chunk = sub.chunk
    pack = (sub.place or "").split(":")[0] == "pack"
    nodes = 1 if pack else chunk.count
    argv = ["sbatch", "--parsable", f"--job-name={sub.name}", f"--partition={QUEUE_PARTITION[sub.queue]}"]
    argv += [f"--chdir={Path.home()}", f"--nodes={nodes}", f"--ntasks={chunk.count}"]
    argv += [f"--cpus-per-task={chunk.ncpus}"]
    if chunk.ngpus:
        argv.append(f"--gpus={chunk.count * chunk.ngpus}")
    if "mem" in chunk.sizes:  # per chunk in PBS, per node in Slurm
        per_node = chunk.sizes["mem"] * (chunk.count if pack else 1)
        argv.append(f"--mem={max(1, -(-per_node // (1 << 20)))}M")
    if sub.walltime is not None:
        d, rest = divmod(sub.walltime, 86400)
        argv.append(f"--time={d}-{hms(rest)}")
    argv += stream_args(sub.join, out, err)
    argv += optional_sbatch_args(sub)
    starter = f"exec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} _start_job"
    argv.append(f"--wrap={starter} {shlex.quote(str(spec))}")
    return argv


def stream_args(join: str, out: str, err: str) -> list[str]:
    if join == "oe":  # stderr joins stdout: Slurm's default when --error is not given
        return [f"--output={out}"]
    if join == "eo":
        return [f"--output={err}", f"--error={err}"]
    return [f"--output={out}", f"--error={err}"]


def optional_sbatch_args(sub: Submission) -> list[str]:
    argv = []
    if sub.array:
        argv.append(f"--array={sub.array.slurm}")
    if sub.account:
        argv.append(f"--account={sub.account}")
    if "depend" in sub.opts.attributes:
        argv.append(f"--dependency={slurm_dependency(sub.opts.attributes['depend'])}")
    if "h" in sub.opts.flags:
        argv.append("--hold")
    argv.append("--requeue" if sub.rerunable else "--no-requeue")
    return argv


def job_environment(sub: Submission) -> dict[str, str]:
    """What the job starts with, as PBS's MOM gives it: site basics + Variable_List.

    PATH and SLURM_CONF play the part of PBS_HOME/pbs_environment (site-wide, not the
    submitter's); everything else the submitter has must come through -v or -V, as in PBS.
    """
    pw = pwd.getpwuid(os.getuid())
    here = str(Path(__file__).resolve().parent)
    env = {
        "HOME": pw.pw_dir,
        "LOGNAME": pw.pw_name,
        "USER": pw.pw_name,
        "SHELL": pw.pw_shell or "/bin/sh",
        "PATH": os.environ.get("PBS_STANDIN_JOB_PATH", f"{here}:/usr/local/bin:/usr/bin:/bin"),
    }
    for key in ("SLURM_CONF", "LANG", "TZ"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(sub.variables)
    return env


def resource_list(sub: Submission) -> dict[str, Any]:
    chunk = sub.chunk
    out: dict[str, Any] = {}
    if sub.filesystems:
        out["filesystems"] = sub.filesystems
    if "mem" in chunk.sizes:
        out["mem"] = f"{chunk.sizes['mem'] * chunk.count // 1024}kb"
    out["ncpus"] = chunk.ncpus * chunk.count
    out["ngpus"] = chunk.ngpus * chunk.count
    out["nodect"] = chunk.count
    out["place"] = sub.place or "free"
    out["select"] = sub.select
    if sub.walltime is not None:
        out["walltime"] = hms(sub.walltime)
    return out


def qsub(argv: list[str]) -> int:
    if argv == ["--version"]:
        print(f"pbs_version = {PBS_VERSION}")
        return 0
    site = Site.from_env()
    sub = build_submission(argv, site)
    token = uuid.uuid4().hex
    spool = site.spool / token
    spool.mkdir(mode=0o700, parents=True)
    script_copy = spool / "script"
    shutil.copyfile(sub.script, script_copy)  # PBS copies the script: later edits do not matter
    os.chmod(script_copy, 0o700)
    spec = spool / "spec.json"
    write_private(spec, json.dumps(starter_spec(sub, script_copy, site), indent=1))
    out, err = stream_paths(sub)
    proc = run(sbatch_argv(sub, spec, out, err))
    if proc.returncode != 0:
        shutil.rmtree(spool, ignore_errors=True)
        raise PbsError(slurm_error(proc))
    seq = int(proc.stdout.strip().split(";")[0])
    write_private(site.jobs / f"{seq}.json", json.dumps(job_record(sub, seq, out, err, spool), indent=1))
    prune_history(site)
    if "z" not in sub.opts.flags:
        print(job_id(seq, array=sub.array is not None))
    return 0


def prune_history(site: Site) -> None:
    """Forget jobs submitted more than two weeks ago, as a PBS server drops old history."""
    cutoff = time.time() - HISTORY_SECONDS
    for path in site.jobs.glob("*.json"):
        try:
            if path.stat().st_mtime >= cutoff:
                continue
            spool = json.loads(path.read_text()).get("spool")
        except (OSError, ValueError):
            continue
        if spool:
            shutil.rmtree(spool, ignore_errors=True)
        path.unlink(missing_ok=True)


def starter_spec(sub: Submission, script: Path, site: Site) -> dict[str, Any]:
    return {
        "name": sub.name,
        "queue": sub.queue,
        "script": str(script),
        "shell": sub.opts.values.get("S"),
        "ncpus": sub.chunk.ncpus,
        "ompthreads": sub.chunk.ints.get("ompthreads", sub.chunk.ncpus),
        "chunks": sub.chunk.count,
        "mpiprocs": sub.chunk.ints.get("mpiprocs", 1),
        "array_range": sub.array.to_json() if sub.array else None,
        "aux": str(site.aux),
        "env": job_environment(sub),
    }


def job_record(sub: Submission, seq: int, out: str, err: str, spool: Path) -> dict[str, Any]:
    v = sub.opts.values
    depend = sub.opts.attributes.get("depend")
    return {
        "seq": seq,
        "name": sub.name,
        "owner": f"{user_name()}@{socket.gethostname()}",
        "queue": sub.queue,
        "account": sub.account,
        "array": sub.array.to_json() if sub.array else None,
        "resource_list": resource_list(sub),
        "ncpus": sub.chunk.ncpus,
        "ngpus": sub.chunk.ngpus,
        "rerunable": sub.rerunable,
        "join": sub.join,
        "keep": sub.keep,
        "hold": "h" in sub.opts.flags,
        "mail_points": v.get("m", "a"),
        "mail_users": v.get("M"),
        "priority": int(v.get("p", "0")),
        "project": v.get("P", "_pbs_project_default"),
        "depend": depend,
        "output": out,  # Output_Path/Error_Path as PBS shows them, joined or not
        "error": err,
        "variables": sub.variables,
        "submit_arguments": shlex.join(sub.argv),
        "submit_host": socket.gethostname(),
        "qtime": time.time(),
        "spool": str(spool),
    }


# --------------------------------------------------------------------------------------------
# the job starter (run by Slurm for every job and subjob)


def start_job(spec_path: str) -> int:
    """Run the user's script as PBS's MOM would: PBS environment, in HOME, exit status kept."""
    spec = json.loads(Path(spec_path).read_text())
    seq, index = slurm_ids(os.environ)
    jid = job_id(seq, index)
    tmpdir = Path(f"/var/tmp/pbs.{jid}")
    tmpdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    nodefile = Path(spec["aux"]) / jid
    nodefile.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # One line per MPI process, as PBS writes it: chunks x mpiprocs (default 1), all on this node.
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    nodefile.write_text(f"{host}\n" * int(spec["chunks"]) * int(spec["mpiprocs"]))
    env = runtime_environment(spec, seq, index, tmpdir, nodefile)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # Slurm signals every process of the job; stay alive to reap the script and report it.
        # A handler, not SIG_IGN: an ignored signal would stay ignored in the script after exec.
        signal.signal(sig, lambda _sig, _frame: None)
    try:
        proc = subprocess.Popen(
            job_command(spec, env), cwd=env["HOME"], env=env, stdin=subprocess.DEVNULL, restore_signals=True
        )
        status = proc.wait()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        nodefile.unlink(missing_ok=True)
    if status < 0:
        # Die of the same signal, so Slurm records "0:<sig>" like a job killed outright.
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def slurm_ids(env: Mapping[str, str]) -> tuple[int, int | None]:
    if env.get("SLURM_ARRAY_JOB_ID"):
        return int(env["SLURM_ARRAY_JOB_ID"]), int(env["SLURM_ARRAY_TASK_ID"])
    return int(env["SLURM_JOB_ID"]), None


def runtime_environment(
    spec: dict[str, Any], seq: int, index: int | None, tmpdir: Path, nodefile: Path
) -> dict[str, str]:
    env = dict(spec["env"])
    env.update(
        {
            "PBS_JOBID": job_id(seq, index),
            "PBS_JOBNAME": spec["name"],
            "PBS_QUEUE": spec["queue"],
            "PBS_ENVIRONMENT": "PBS_BATCH",
            "PBS_JOBDIR": env["HOME"],
            "PBS_NODEFILE": str(nodefile),
            "PBS_TASKNUM": "1",
            "PBS_NODENUM": "0",
            "PBS_VNODENUM": "0",
            "NCPUS": str(spec["ncpus"]),
            "OMP_NUM_THREADS": str(spec["ompthreads"]),
            "TMPDIR": str(tmpdir),
        }
    )
    if index is not None:
        env["PBS_ARRAY_INDEX"] = str(index)
        env["PBS_ARRAY_ID"] = job_id(seq, array=True)
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # the GPUs Slurm allocated, as PBS's cgroup hook would set
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


def job_command(spec: dict[str, Any], env: dict[str, str]) -> list[str]:
    script = spec["script"]
    if spec.get("shell"):
        return [spec["shell"], script]
    with open(script, "rb") as f:
        if f.read(2) == b"#!":
            return [script]  # the kernel runs the interpreter of the #! line
    return [env["SHELL"], script]  # PBS's default: the user's login shell


# --------------------------------------------------------------------------------------------
# Slurm's view of the jobs

FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "REVOKED",
    "SPECIAL_EXIT",
}
LIVE_LETTER = {
    "PENDING": "Q",
    "REQUEUED": "Q",
    "REQUEUE_HOLD": "H",
    "REQUEUE_FED": "Q",
    "CONFIGURING": "R",
    "RUNNING": "R",
    "RESIZING": "R",
    "COMPLETING": "E",
    "STAGE_OUT": "E",
    "SIGNALING": "E",
    "SUSPENDED": "S",
    "STOPPED": "S",
}
SUBSTATE = {"Q": 10, "H": 20, "W": 30, "R": 42, "S": 43, "E": 50, "X": 69, "B": 70}


@dataclass
class SlurmRow:
    state: str = ""
    reason: str = ""
    exit_code: str = ""  # sacct's "code:signal"
    start: float | None = None
    end: float | None = None
    elapsed: int | None = None
    node: str = ""


Key = tuple[int, int | None]  # (slurm job id / array job id, array task id)


def expand_task_ids(text: str) -> list[int]:
    """sacct's pending/cancelled task groups: "[3-5,8%2]" -> [3, 4, 5, 8]."""
    text = text.strip("[]").split("%")[0]
    out: list[int] = []
    for part in text.split(","):
        span, _colon, step = part.partition(":")
        lo, _dash, hi = span.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return out


def slurm_time(value: str) -> float | None:
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None  # "Unknown", "None", ""


def squeue_rows(user: str) -> dict[Key, SlurmRow]:
    proc = run(["squeue", "-h", "-r", "-t", "all", "-u", user, "-o", "%F|%K|%T|%r|%N"])
    if proc.returncode != 0:
        raise PbsError(f"cannot reach the batch server (squeue: {slurm_error(proc)})")
    rows: dict[Key, SlurmRow] = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        seq, task, state, reason, node = parts
        index = int(task) if task.isdigit() else None
        rows[(int(seq), index)] = SlurmRow(state=state, reason=reason, node=node)
    return rows


def sacct_rows(seqs: Iterable[int]) -> dict[Key, SlurmRow]:
    """Accounting rows per job/subjob; the exit code is the batch step's (the script's own).

    The allocation line of a job deleted while running says 0:0; its .batch step has the
    signal (0:15) or the code the script exited with when it trapped the signal.
    """
    ids = ",".join(str(s) for s in sorted(set(seqs)))
    if not ids:
        return {}
    fmt = "JobID,State,ExitCode,Start,End,ElapsedRaw,NodeList,Reason"
    proc = run(["sacct", "-n", "-P", "-j", ids, "-o", fmt])
    if proc.returncode != 0:
        raise PbsError(f"cannot read job history (sacct: {slurm_error(proc)})")
    rows: dict[Key, SlurmRow] = {}
    batch_codes: dict[Key, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 8:
            continue
        jobid, step = parts[0].split(".", 1) if "." in parts[0] else (parts[0], "")
        if step:
            seq, _us, task = jobid.partition("_")
            if step == "batch" and seq.isdigit():
                batch_codes[(int(seq), int(task) if task.isdigit() else None)] = parts[2]
            continue
        add_sacct_row(rows, jobid, parts[1:])
    for key, code in batch_codes.items():
        if key in rows:
            rows[key].exit_code = code
    return rows


def add_sacct_row(rows: dict[Key, SlurmRow], jobid: str, fields: list[str]) -> None:
    state, exit_code, start, end, elapsed, node, reason = fields
    ran = node not in ("None assigned", "")
    row = SlurmRow(
        state=state.split()[0] if state else "",
        reason=reason,
        exit_code=exit_code,
        # Slurm gives a job cancelled while pending a Start (= its End); PBS: it never ran.
        start=slurm_time(start) if ran else None,
        end=slurm_time(end),
        elapsed=int(elapsed) if elapsed.isdigit() else None,
        node=node if ran else "",
    )
    seq, _us, task = jobid.partition("_")
    if seq.isdigit():
        for index in expand_task_ids(task) if task else [None]:
            rows[(int(seq), index)] = replace(row)


def merge_rows(live: SlurmRow | None, acct: SlurmRow | None) -> tuple[SlurmRow | None, str]:
    """One row and PBS's letter for it; "F" means finished (X for a subjob of a live array).

    squeue knows the present, sacct knows exit codes and times. A job squeue calls finished that
    sacct has not recorded yet is still Exiting for PBS.
    """
    if live and live.state not in FINISHED:
        base = acct or SlurmRow()
        row = replace(base, state=live.state, reason=live.reason, node=live.node or base.node)
        return row, live_letter(live)
    if acct and acct.state in FINISHED:
        return acct, "F"
    if live:
        # Ended, but not yet in accounting: one that never ran is simply gone; one that ran is
        # Exiting until its exit code is recorded.
        return live, "E" if live.node else "F"
    if acct:
        return acct, live_letter(acct)
    return None, "Q"  # just submitted: neither has it yet


def live_letter(row: SlurmRow) -> str:
    if row.state == "PENDING" and row.reason in ("JobHeldUser", "JobHeldAdmin"):
        return "H"
    if row.state == "PENDING" and row.reason == "BeginTime":
        return "W"
    return LIVE_LETTER.get(row.state, "Q")


def exit_status(row: SlurmRow) -> int | None:
    """PBS's Exit_status for a finished job; None for a job deleted before it ran."""
    if row.start is None:
        return None
    if row.state == "TIMEOUT":
        return JOB_EXEC_KILL_WALLTIME
    if row.state == "OUT_OF_MEMORY":
        return JOB_EXEC_KILL_MEM
    if row.state in ("NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"):
        return JOB_EXEC_FAIL1
    code, _colon, sig = row.exit_code.partition(":")
    if sig.isdigit() and int(sig):
        return SIGNAL_BASE + int(sig)
    if row.state == "CANCELLED" and code in ("", "0", str(int(signal.SIGTERM))):
        # Deleted while running, but Slurm recorded no signal (the script was gone before the step's
        # status was taken), or recorded SIGTERM's number as the exit code (seen under load): PBS reports
        # the SIGTERM that qdel sends.
        return SIGNAL_BASE + signal.SIGTERM
    return int(code) if code.isdigit() else None


# --------------------------------------------------------------------------------------------
# jobs as qstat shows them


@dataclass
class TaskStatus:
    """A plain job or one subjob, with PBS's letter."""

    letter: str
    row: SlurmRow | None

    @property
    def finished(self) -> bool:
        return self.letter == "F"

    @property
    def started(self) -> bool:
        return self.letter in ("R", "E", "S") or (self.finished and bool(self.row and self.row.start))


@dataclass
class Job:
    record: dict[str, Any]
    tasks: dict[int | None, TaskStatus]  # {None: status} for a plain job, {index: status} for an array

    @property
    def seq(self) -> int:
        return int(self.record["seq"])

    @property
    def array(self) -> ArrayRange | None:
        data = self.record.get("array")
        return ArrayRange.from_json(data) if data else None

    @property
    def finished(self) -> bool:
        return all(t.finished for t in self.tasks.values())

    def letter(self) -> str:
        if not self.array:
            return self.tasks[None].letter
        if self.finished:
            return "F"
        if any(t.started for t in self.tasks.values()):
            return "B"
        return "H" if all(t.letter == "H" for t in self.tasks.values()) else "Q"


def load_records(site: Site, seqs: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    records = {}
    paths = [site.jobs / f"{s}.json" for s in seqs] if seqs is not None else sorted(site.jobs.glob("*.json"))
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        records[int(record["seq"])] = record
    return records


def load_jobs(site: Site, seqs: Iterable[int] | None = None) -> dict[int, Job]:
    records = load_records(site, seqs)
    if not records:
        return {}
    live = squeue_rows(user_name())
    acct = sacct_rows(records)
    jobs = {}
    for seq, record in records.items():
        array = record.get("array")
        indices: list[int | None] = list(ArrayRange.from_json(array).indices) if array else [None]
        tasks = {}
        for index in indices:
            row, letter = merge_rows(live.get((seq, index)), acct.get((seq, index)))
            tasks[index] = TaskStatus(letter, row)
        jobs[seq] = Job(record, tasks)
    return jobs


def common_attributes(job: Job) -> dict[str, Any]:
    r = job.record
    attrs: dict[str, Any] = {
        "Job_Name": r["name"],
        "Job_Owner": r["owner"],
        "queue": r["queue"],
        "server": SERVER,
    }
    if r.get("account"):
        attrs["Account_Name"] = r["account"]
    attrs |= {
        "Checkpoint": "u",
        "ctime": pbs_time(r["qtime"]),
        "Hold_Types": "u" if r.get("hold") else "n",
        "Join_Path": r["join"],
        "Keep_Files": r["keep"],
        "Mail_Points": r["mail_points"],
    }
    if r.get("mail_users"):
        attrs["Mail_Users"] = r["mail_users"]
    attrs |= {"Priority": r["priority"], "qtime": pbs_time(r["qtime"]), "Rerunable": str(r["rerunable"])}
    attrs["Resource_List"] = dict(r["resource_list"])
    return attrs


def state_attributes(job: Job, status: TaskStatus, letter: str, index: int | None) -> dict[str, Any]:
    """Times, state, exec host, comment and Exit_status of one job or subjob."""
    r = job.record
    row = status.row
    times = [t for t in (r["qtime"], row and row.start, row and row.end) if t]
    attrs: dict[str, Any] = {"job_state": letter, "mtime": pbs_time(max(times))}
    attrs |= path_attributes(job, index)
    start = row.start if row is not None and letter not in ("Q", "H", "W") else None
    if row is not None and start is not None:
        attrs["stime"] = pbs_time(start)
        attrs |= exec_attributes(r, row)
    if status.finished and row is not None and row.end is not None:
        attrs["obittime"] = pbs_time(row.end)
    attrs["jobdir"] = r["variables"].get("PBS_O_HOME", str(Path.home()))
    attrs["substate"] = substate(status, letter)
    attrs["comment"] = comment(status, letter, row)
    attrs["etime"] = pbs_time(r["qtime"])
    attrs["run_count"] = 1 if start is not None else 0
    if status.finished and row is not None and (code := exit_status(row)) is not None:
        attrs["Exit_status"] = code
    return attrs


def path_attributes(job: Job, index: int | None) -> dict[str, Any]:
    r = job.record
    return {
        "Output_Path": display_path(r["output"], job.seq, index),
        "Error_Path": display_path(r["error"], job.seq, index),
    }


def exec_attributes(r: dict[str, Any], row: SlurmRow) -> dict[str, Any]:
    host = row.node or "localhost"
    gpus = f":ngpus={r['ngpus']}" if r["ngpus"] else ""
    return {
        "exec_host": f"{host}/0*{r['ncpus']}" if r["ncpus"] > 1 else f"{host}/0",
        "exec_vnode": f"({host}:ncpus={r['ncpus']}{gpus})",
        "resources_used": {"ncpus": r["ncpus"], "walltime": hms(row.elapsed or 0)},
    }


def substate(status: TaskStatus, letter: str) -> int:
    if letter != "F":
        return SUBSTATE.get(letter, 10)
    state = status.row.state if status.row else ""
    return 91 if state == "CANCELLED" else 92 if state in ("COMPLETED", "FAILED", "") else 93


def comment(status: TaskStatus, letter: str, row: SlurmRow | None) -> str:
    """An approximation of the scheduler's comments; the wording of a real server differs."""
    if letter in ("Q", "H", "W"):
        why = row.reason if row and row.reason not in ("", "None") else "waiting"
        return f"Not Running: {why} (Slurm reason; pbs-standin)"
    if row is None or row.start is None:
        return "Job deleted before it ran" if status.finished else ""
    ran = f"Job run at {time.strftime('%a %b %d at %H:%M', time.localtime(row.start))} on ({row.node or 'localhost'})"
    if not status.finished:
        return ran
    return f"{ran} and {'terminated' if row.state in ('CANCELLED', 'TIMEOUT') else 'finished'}"


def array_attributes(job: Job, array: ArrayRange) -> dict[str, Any]:
    tasks = job.tasks.values()
    count = {
        "Queued": sum(t.letter in ("Q", "H", "W") for t in tasks),
        "Running": sum(t.letter in ("R", "S") for t in tasks),
        "Exiting": sum(t.letter == "E" for t in tasks),
        "Expired": sum(t.finished for t in tasks),
    }
    remaining = [i for i, t in job.tasks.items() if t.letter in ("Q", "H", "W") and i is not None]
    attrs: dict[str, Any] = {
        "array": "True",
        "array_state_count": "".join(f"{k}:{v} " for k, v in count.items()),  # PBS ends it with a space
        "array_indices_submitted": array.submitted,
        "array_indices_remaining": compress_indices(remaining),
    }
    if array.max_run:
        attrs["max_run_subjobs"] = array.max_run
    if job.finished:
        codes = [c for t in tasks if t.row and (c := exit_status(t.row)) is not None]
        if codes:  # PBS: 0 when every subjob that ran exited 0, else 1
            attrs["Exit_status"] = 0 if all(c == 0 for c in codes) else 1
    return attrs


def tail_attributes(job: Job) -> dict[str, Any]:
    r = job.record
    attrs: dict[str, Any] = {"Variable_List": dict(r["variables"])}
    attrs["Submit_arguments"] = r["submit_arguments"]
    attrs["project"] = r["project"]
    attrs["Submit_Host"] = r["submit_host"]
    if r.get("depend"):
        attrs["depend"] = r["depend"]
    return attrs


def parent_view(job: Job) -> dict[str, Any]:
    array = job.array
    letter = job.letter()
    if array is None:
        status = job.tasks[None]
        return {**common_attributes(job), **state_attributes(job, status, letter, None), **tail_attributes(job)}
    r = job.record
    rows = [t.row for t in job.tasks.values() if t.row is not None]
    starts = [row.start for row in rows if row.start]
    ends = [row.end for row in rows if row.end]
    attrs = common_attributes(job)
    attrs |= {"job_state": letter, "mtime": pbs_time(max([r["qtime"], *starts, *ends]))}
    attrs |= path_attributes(job, None)
    if starts:
        attrs["stime"] = pbs_time(min(starts))
    if letter == "F" and ends:
        attrs["obittime"] = pbs_time(max(ends))
    attrs["jobdir"] = r["variables"].get("PBS_O_HOME", str(Path.home()))
    attrs["substate"] = 92 if letter == "F" else SUBSTATE.get(letter, 10)
    attrs["comment"] = {"B": "Job Array Began", "F": "Job Array finished"}.get(letter, "")
    attrs["etime"] = pbs_time(r["qtime"])
    return {**attrs, **array_attributes(job, array), **tail_attributes(job)}


def subjob_view(job: Job, index: int) -> dict[str, Any]:
    status = job.tasks[index]
    letter = status.letter
    if letter == "F" and not job.finished:
        letter = "X"  # a finished subjob of a live array
    attrs = {**common_attributes(job), **state_attributes(job, status, letter, index)}
    attrs |= {"array_id": job_id(job.seq, array=True), "array_index": index}
    return {**attrs, **tail_attributes(job)}


# --------------------------------------------------------------------------------------------
# qstat


@dataclass
class QstatArgs:
    full: bool = False
    json: bool = False
    history: bool = False
    subjobs: bool = False
    arrays_only: bool = False
    queues: bool = False  # -Q: the queue table instead of jobs
    ids: list[str] = field(default_factory=list)


def parse_qstat_args(argv: list[str]) -> QstatArgs:
    try:
        pairs, ids = getopt.gnu_getopt(argv, "fF:JtxwED:1Q")
    except getopt.GetoptError as exc:
        raise getopt_error(exc) from exc
    args = QstatArgs(ids=ids)
    for flag, value in pairs:
        if flag == "-f":
            args.full = True
        elif flag == "-F":
            if value.lower() != "json":
                raise PbsError(f"-F {value} is not supported by pbs-standin (only json)", EXIT_USAGE, usage=True)
            args.json = True
        elif flag == "-x":
            args.history = True
        elif flag == "-t":
            args.subjobs = True
        elif flag == "-J":
            args.arrays_only = True
        elif flag == "-Q":
            args.queues = True
    if args.json and not args.full:
        raise PbsError("-F json requires -f", EXIT_USAGE, usage=True)
    return args


@dataclass
class Selection:
    """What qstat prints: (job, subjob index or None for the job/array itself), in order."""

    entries: list[tuple[Job, int | None]] = field(default_factory=list)
    errors: list[tuple[str, int]] = field(default_factory=list)  # (message, exit status)


def select_by_ids(args: QstatArgs, site: Site) -> Selection:
    refs = [parse_job_id(text) for text in args.ids]
    jobs = load_jobs(site, {r.seq for r in refs if not r.foreign})
    sel = Selection()
    for ref in refs:
        job = None if ref.foreign else jobs.get(ref.seq)
        if job is None or (ref.index is not None and (not job.array or ref.index not in job.tasks)):
            sel.errors.append((f"Unknown Job Id {ref_name(ref)}", EXIT_UNKNOWN_JOB))
            continue
        if ref.index is not None:
            add_subjob(sel, args, job, ref.index, ref_name(ref))
        else:
            add_job(sel, args, job, job_id(job.seq, array=job.array is not None))
    return sel


def add_job(sel: Selection, args: QstatArgs, job: Job, name: str) -> None:
    if job.finished and not args.history:
        sel.errors.append(
            (f"{name} Job has finished, use -x or -H to obtain historical job information", EXIT_JOB_FINISHED)
        )
        return
    if not (args.arrays_only and args.subjobs):
        sel.entries.append((job, None))
    if job.array and args.subjobs:
        sel.entries.extend((job, i) for i in job.tasks if i is not None)


def add_subjob(sel: Selection, args: QstatArgs, job: Job, index: int, name: str) -> None:
    if job.finished and not args.history:
        sel.errors.append(
            (f"{name} Job has finished, use -x or -H to obtain historical job information", EXIT_JOB_FINISHED)
        )
        return
    sel.entries.append((job, index))


def select_all(args: QstatArgs, site: Site) -> Selection:
    sel = Selection()
    for _seq, job in sorted(load_jobs(site).items()):
        if job.finished and not args.history:
            continue
        if args.arrays_only and not job.array:
            continue
        if not (args.arrays_only and args.subjobs):
            sel.entries.append((job, None))
        if job.array and args.subjobs:
            sel.entries.extend((job, i) for i in job.tasks if i is not None)
    return sel


def view(job: Job, index: int | None) -> tuple[str, dict[str, Any]]:
    if index is None:
        return job_id(job.seq, array=job.array is not None), parent_view(job)
    return job_id(job.seq, index), subjob_view(job, index)


def print_json(sel: Selection) -> None:
    doc: dict[str, Any] = {"timestamp": int(time.time()), "pbs_version": PBS_VERSION, "pbs_server": SERVER}
    if sel.entries:
        doc["Jobs"] = dict(view(job, index) for job, index in sel.entries)
    print(json.dumps(doc, indent=4, separators=(",", ":")))


def flatten(attrs: dict[str, Any]) -> Iterable[tuple[str, str]]:
    for key, value in attrs.items():
        if key == "Variable_List":
            yield key, ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, dict):
            for sub, val in value.items():
                yield f"{key}.{sub}", str(val)
        else:
            yield key, str(value)


def print_full(sel: Selection) -> None:
    for job, index in sel.entries:
        name, attrs = view(job, index)
        print(f"Job Id: {name}")
        for key, value in flatten(attrs):
            print(f"    {key} = {value}")
        print()


def fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "*"


def print_table(sel: Selection) -> None:
    if not sel.entries:
        return
    print(f"{'Job id':<17} {'Name':<16} {'User':<16}  {'Time Use':>8} S Queue")
    print(f"{'-' * 16}  {'-' * 16} {'-' * 16}  {'-' * 8} - -----")
    for job, index in sel.entries:
        name, attrs = view(job, index)
        user = attrs["Job_Owner"].split("@")[0]
        used = attrs.get("resources_used", {}).get("walltime", "0")
        print(
            f"{fit(name, 17):<17} {fit(attrs['Job_Name'], 16):<16} {fit(user, 16):<16}  "
            f"{used:>8} {attrs['job_state']} {attrs['queue']}"
        )


def print_queues(names: list[str]) -> int:
    """`qstat -Q`: PBS Pro's queue table, every queue enabled and started. The job counts are not kept by the
    stand-in and print as 0."""
    unknown = [name for name in names if name not in QUEUE_PARTITION]
    print(f"{'Queue':<16}   Max   Tot Ena Str   Que   Run   Hld   Wat   Trn   Ext Type")
    print("---------------- ----- ----- --- --- ----- ----- ----- ----- ----- ----- ----")
    for name in [n for n in names if n not in unknown] or list(QUEUE_PARTITION):
        kind = "Rout" if name in ROUTING_QUEUES else "Exec"
        print(f"{name:<16} {0:>5} {0:>5} yes yes {0:>5} {0:>5} {0:>5} {0:>5} {0:>5} {0:>5} {kind}")
    for name in unknown:
        print(f"qstat: Unknown queue {name}", file=sys.stderr)
    return 1 if unknown else 0


def qstat(argv: list[str]) -> int:
    if argv == ["--version"]:
        print(f"pbs_version = {PBS_VERSION}")
        return 0
    args = parse_qstat_args(argv)
    if args.queues:
        return print_queues(args.ids)
    site = Site.from_env()
    sel = select_by_ids(args, site) if args.ids else select_all(args, site)
    if args.json:
        print_json(sel)
    elif args.full:
        print_full(sel)
    else:
        print_table(sel)
    for message, _status in sel.errors:
        print(f"qstat: {message}", file=sys.stderr)
    return max((status for _m, status in sel.errors), default=0)


# --------------------------------------------------------------------------------------------
# qdel

QDEL_WAIT = 10.0  # seconds qdel waits for Slurm to stop the jobs (PBS's qdel returns once deleted)


def qdel(argv: list[str]) -> int:
    if argv == ["--version"]:
        print(f"pbs_version = {PBS_VERSION}")
        return 0
    try:
        pairs, ids = getopt.gnu_getopt(argv, "W:x")
    except getopt.GetoptError as exc:
        raise getopt_error(exc) from exc
    for flag, value in pairs:
        if flag == "-W" and value not in ("force", "suppress_email") and not value.isdigit():
            raise illegal("W")
    if not ids:
        raise PbsError("no job identifier given", EXIT_USAGE, usage=True)
    site = Site.from_env()
    refs = [parse_job_id(text) for text in ids]
    jobs = load_jobs(site, {r.seq for r in refs if not r.foreign})
    targets: list[Key] = []
    status = 0
    for ref in refs:
        key, error = qdel_target(ref, jobs)
        if error:
            print(f"qdel: {error[0]}", file=sys.stderr)
            status = max(status, error[1])
        elif key:
            targets.append(key)
    if targets:
        cancel(targets)
    return status


def qdel_target(ref: JobRef, jobs: dict[int, Job]) -> tuple[Key | None, tuple[str, int] | None]:
    job = None if ref.foreign else jobs.get(ref.seq)
    name = ref_name(ref)
    if job is None or (ref.index is not None and (not job.array or ref.index not in job.tasks)):
        return None, (f"Unknown Job Id {name}", EXIT_UNKNOWN_JOB)
    if ref.index is not None:
        if job.tasks[ref.index].finished:
            return None, (f"Job has finished {name}", EXIT_JOB_FINISHED)
        return (job.seq, ref.index), None
    if job.finished:
        return None, (f"Job has finished {job_id(job.seq, array=job.array is not None)}", EXIT_JOB_FINISHED)
    return (job.seq, None), None


def cancel(targets: list[Key]) -> None:
    names = [f"{seq}_{index}" if index is not None else str(seq) for seq, index in targets]
    proc = run(["scancel", *names])
    if proc.returncode != 0:
        raise PbsError(slurm_error(proc))
    deadline = time.monotonic() + QDEL_WAIT
    while time.monotonic() < deadline:
        live = squeue_rows(user_name())
        busy = [k for k, row in live.items() if row.state in LIVE_LETTER and row.state != "COMPLETING"]
        if not any(matches(k, targets) for k in busy):
            return
        time.sleep(0.2)


def matches(key: Key, targets: list[Key]) -> bool:
    return any(key[0] == seq and (index is None or key[1] == index) for seq, index in targets)


# --------------------------------------------------------------------------------------------
# entry point

COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "qsub": (qsub, QSUB_USAGE),
    "qstat": (qstat, QSTAT_USAGE),
    "qdel": (qdel, QDEL_USAGE),
}


def main(argv: list[str]) -> int:
    name = Path(argv[0]).name
    args = argv[1:]
    if name not in COMMANDS and args and (args[0] in COMMANDS or args[0] == "_start_job"):
        name, args = args[0], args[1:]
    if name == "_start_job":
        return start_job(args[0])
    if name not in COMMANDS:
        print(f"pbs-standin: call me as qsub, qstat or qdel, not {name!r}", file=sys.stderr)
        return EXIT_USAGE
    command, usage = COMMANDS[name]
    try:
        return command(args)
    except PbsError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        if exc.usage:
            print(usage, file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # `qstat ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
