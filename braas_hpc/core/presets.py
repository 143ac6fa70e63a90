"""Cluster presets: data files validated by one schema.

Built-in presets live in `braas_hpc/core/presets/*.toml`; a user's presets in
`<config dir>/presets/*.toml` (see `paths.user_presets_dir`) and win over a built-in of the same name.
A new site needs a file, not code. Every error names the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import pkgutil
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PresetError
from .hostnames import valid_host_name
from .jobs import SAFE_VALUE
from .paths import user_presets_dir

BUILTIN_DIR = Path(__file__).parent / "presets"
SCHEDULERS_DIR = Path(__file__).parent / "schedulers"
LOCAL = "local"  # the scheduler of the `local` preset: this computer's own queue (schedulers/local.py)
SSH_BACKENDS = ("asyncssh", "paramiko", "openssh")
KINDS = ("cpu", "gpu")
CYCLES_DEVICES = ("CPU", "CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")
ARCHES = ("x86_64", "aarch64")
BILLING = ("core-hours", "gpu-hours", "node-hours")  # what a site's allocation counts (core.estimate)
ALLOCATION_FORMATS = ("it4ifree", "lumi-allocations", "saldo", "sbank")  # parsers in core.allocation
MAX_KEEP_CONNECTION_MIN = 24 * 60  # a kept login outlives no working day
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")  # \Z: `$` would let "name\n" pass
_WORKDIR_PUNCTUATION = frozenset("/_.-+@")
# The facts of a preset that a site page either confirms or not (docs/presets.md gives each its source). An entry
# of `unconfirmed` is one of these, or "fact:PARTITION" for one partition's (e.g. "walltime:qcpu_preempt").
FACTS = ("host", "login", "partitions", "walltime", "gpu_request", "cores", "modules", "directives", "account",
         "cycles_device", "blender", "workdir", "arrays", "job_limits", "finish")
UNCONFIRMED_NOTE = "unconfirmed: check with your site"


@dataclass(frozen=True)
class Partition:
    """A partition (Slurm) or queue (PBS) and what a render task asks of it."""

    kind: str = "cpu"
    partition: str = ""  # the scheduler's partition/queue name when the entry's name is not it (empty: the name)
    qos: str = ""  # Slurm --qos (MareNostrum 5's queues are QoS values)
    max_walltime_min: int = 2880
    default_walltime_min: int = 60
    gpus_per_task: int = 0  # GPUs one array task asks for (gpu partitions)
    cpus_per_task: int = 0  # cores one array task asks for; 0: the scheduler's default
    whole_node: bool = False  # the site gives whole nodes only: ask for the node, use all of it
    cycles_device: str = "CPU"  # the Cycles device for this hardware
    extra_directives: tuple[str, ...] = ()  # added for jobs on this partition only
    arch: str = ""  # overrides the preset's arch (an arm partition on an x86 cluster)
    max_jobs_per_user: int = 0  # this partition's own limit (each array task counts); 0: the preset's
    preemptible: bool = False  # the site may stop a job here for other work: jobs ask to be requeued
    # Where the finish step of a job on this partition goes (a key of `partitions`), for a site whose rules
    # make a summary cheaper elsewhere for every project that may use this one; empty: this partition.
    finish: str = ""
    # What the site bills a job here in (BILLING; empty: the preset's `billing`) and how many of its units one
    # core-, GPU- or node-hour costs; a node's cores and GPUs turn a part of a node into node-hours.
    billing: str = ""
    billing_factor: float = 1.0
    node_cores: int = 0
    node_gpus: int = 0
    note: str = ""  # shown to the user (access rules, limits)


@dataclass(frozen=True)
class Preset:
    name: str
    scheduler: str
    title: str = ""
    host: str = ""
    hosts: tuple[str, ...] = ()  # other login nodes of the same cluster
    port: int = 22
    user: str = ""
    key_file: str = ""
    known_hosts: str = ""  # empty: the user's ~/.ssh/known_hosts
    ssh_backend: str = "asyncssh"
    proxy_jump: str = ""  # OpenSSH ProxyJump syntax, e.g. "me@gateway.example.org"
    ssh_config: str = ""  # empty: ~/.ssh/config when it exists; "none": ignore it
    auth_note: str = ""  # how a user logs in (MFA, certificates), shown in the UI
    # Minutes an unused connection stays open in the connection keeper for the next command; 0: none is kept.
    keep_connection_min: int = 30
    workdir: str = ""  # absolute path on the cluster; empty on `local`: the user's data directory
    workdir_hint: str = ""  # the documented place, e.g. "/scratch/project/{account}" (shown, never guessed)
    workdir_command: tuple[str, ...] = ()  # a site command that prints it, e.g. ["it4i-get-project-dir", "{account}"]
    account: str = ""
    account_required: bool = False
    partitions: dict[str, Partition] = field(default_factory=dict)
    partition_cpu: str = ""  # the default CPU partition (a key of `partitions`)
    partition_gpu: str = ""  # the default GPU partition
    gpu_request: str = ""  # how GPUs are asked for: each scheduler's own words (Scheduler.gpu_requests)
    memory_allowed: bool = True  # whether --mem / mem= may be sent (Vista rejects it)
    mail_allowed: bool = True
    extra_directives: tuple[str, ...] = ()  # directive arguments added to every job, e.g. "-l filesystems=eagle"
    drop_directives: tuple[str, ...] = ()  # directive names never sent, e.g. "--mem"
    arrays: bool = True  # false: the site has no job arrays, so each task is its own job (Frontera)
    max_array_size: int = 1000
    max_jobs_per_user: int = 0  # queued jobs allowed; each array task counts; 0: unknown
    arch: str = "x86_64"
    blender: str = "blender"  # the command that starts Blender on the cluster; empty on `local`: found
    blender_note: str = ""  # why a user-given Blender is needed (aarch64 has no official build)
    scripts_git: str = ""  # a site that keeps its own cluster scripts: their git URL (empty: from the package)
    scripts_branch: str = "main"  # the branch of scripts_git
    # The login node's Python (3.6+) that runs the submission helper; empty: one remote command at a time.
    login_python: str = "python3"
    env: tuple[str, ...] = ()  # lines run before Blender (module loads)
    # The finish step's lines instead of `env` (it renders nothing, so GPU modules are not needed);
    # None (the key absent): `env`, which a site whose Blender itself comes from a module needs.
    finish_env: tuple[str, ...] | None = None
    # The finish step's ffmpeg, to make a movie of the frames on the cluster: a path, or a command that
    # `ffmpeg_env`'s lines (module loads) put on PATH. Empty: movies are made on the user's computer.
    ffmpeg: str = ""
    ffmpeg_env: tuple[str, ...] = ()
    default_walltime_min: int = 60
    max_walltime_min: int = 2880
    billing: str = ""  # the partitions' default (BILLING); empty: core-hours on CPU, GPU-hours on GPU, unconfirmed
    # The site's command that prints the project's balance ("{account}" is replaced), and which of
    # ALLOCATION_FORMATS it prints; empty: the site has none that braas-hpc reads.
    allocation_command: tuple[str, ...] = ()
    allocation_format: str = ""
    # Facts no page of the site confirmed (FACTS, or "fact:PARTITION"): shown as "unconfirmed: check with your
    # site" by `presets` and the panel; `doctor` says which of them the login node confirms.
    unconfirmed: tuple[str, ...] = ()
    base: str = ""  # a user preset's built-in parent: every key not set here comes from it
    source: str = ""  # the file it was read from, for messages

    @property
    def is_local(self) -> bool:
        return self.scheduler == LOCAL

    def partition(self, name: str) -> Partition:
        """A partition by name; one not in the table is taken as described by the preset's defaults."""
        if name in self.partitions:
            return self.partitions[name]
        kind = "gpu" if name and name == self.partition_gpu else "cpu"
        return Partition(kind=kind, max_walltime_min=self.max_walltime_min,
                         default_walltime_min=self.default_walltime_min, gpus_per_task=1 if kind == "gpu" else 0,
                         cycles_device="CUDA" if kind == "gpu" else "CPU")

    def default_partition(self, gpu: bool) -> str:
        return self.partition_gpu if gpu else self.partition_cpu


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def _type_ok(expected: str, value: object) -> tuple[bool, object]:
    if expected == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if expected == "float":  # TOML writes 1 for 1.0
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value  # type: ignore[arg-type]
    if expected == "bool":
        return isinstance(value, bool), value
    if expected == "str":
        return isinstance(value, str), value
    if expected in ("tuple[str, ...]", "tuple[str, ...] | None"):  # TOML has no null: present is a list
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return ok, tuple(value) if ok else value  # type: ignore[arg-type]
    raise AssertionError(f"no check for {expected}")


def _checked(cls: type, data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PresetError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PresetError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are: {', '.join(sorted(fields))}")
    checked: dict[str, Any] = {}
    for key, value in data.items():
        expected = fields[key].type
        if expected == "dict[str, Partition]":
            if not isinstance(value, dict):
                raise PresetError(f"{where}: partitions must be a table of [partitions.NAME] tables")
            checked[key] = {name: Partition(**_checked(Partition, table, f"{where}: partitions.{name}"))
                            for name, table in value.items()}
            continue
        ok, converted = _type_ok(str(expected), value)
        if not ok:
            raise PresetError(f"{where}: {key} must be of type {expected}, got {value!r}")
        checked[key] = converted
    return checked


def preset_from_dict(data: dict[str, object], source: str) -> Preset:
    """Validate one preset's data; every problem names the file and the key."""
    checked = _checked(Preset, data, f"preset {source}")
    for required in ("name", "scheduler"):
        if not checked.get(required):
            raise PresetError(f"preset {source}: missing required key {required!r}")
    preset = Preset(**checked, source=source)
    _check_values(preset)
    return preset


@functools.cache
def scheduler_names() -> tuple[str, ...]:
    """Every scheduler a preset may name: one module each in core/schedulers, named as presets name it
    (`slurm.py` for "slurm"; `_name.py` modules are helpers). Listed by file, not imported: the schedulers
    build on presets."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(SCHEDULERS_DIR)])
                        if not m.name.startswith("_") and m.name != "base"))


def _one_of(where: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PresetError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")


def _check_values(p: Preset) -> None:
    where = f"preset {p.source}"
    if not _NAME.match(p.name):
        raise PresetError(f"{where}: name {p.name!r} must be lower-case letters, digits, '-', '_' or '.'")
    _one_of(where, "scheduler", p.scheduler, scheduler_names())
    _one_of(where, "ssh_backend", p.ssh_backend, SSH_BACKENDS)
    _one_of(where, "arch", p.arch, ARCHES)
    if not p.is_local:
        for key in ("host", "blender") if p.arch == "x86_64" else ("host",):
            if not getattr(p, key):
                raise PresetError(f"{where}: {key} is required for a {p.scheduler} cluster")
        if not valid_host_name(p.host):
            raise PresetError(f"{where}: host {p.host!r} must be a host name or address (letters, digits, '.', '-', "
                              "'_', ':'); patterns such as '*', spaces and several lines are refused")
        if p.workdir and not p.workdir.startswith("/"):
            raise PresetError(f"{where}: workdir {p.workdir!r} must be an absolute path on the cluster")
    _check_numbers(p, where)
    if p.scripts_git.startswith("-") or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*\Z", p.scripts_branch):
        raise PresetError(f"{where}: scripts_git must be a git URL and scripts_branch a branch name, got "
                          f"{p.scripts_git!r} and {p.scripts_branch!r}")
    for line in (*p.env, *(p.finish_env or ()), *p.extra_directives, p.blender, p.login_python):
        if any(c in line for c in "\n\r\0"):
            raise PresetError(f"{where}: env lines, directives, blender and login_python must be single lines "
                              "without NUL, "
                              f"got {line!r}")
    _check_ffmpeg(p, where)
    _check_partitions(p, where)
    _check_unconfirmed(p, where)
    _check_billing(p, where)
    if not p.is_local:
        _check_directive_words(p, where)


_COMMAND = re.compile(r"^(/[A-Za-z0-9_.+@/-]+|[A-Za-z0-9_.+-]+)\Z")  # an absolute path, or a name found on PATH


def _check_ffmpeg(p: Preset, where: str) -> None:
    if p.ffmpeg and not _COMMAND.match(p.ffmpeg):
        raise PresetError(f"{where}: ffmpeg {p.ffmpeg!r} must be an absolute path (/apps/ffmpeg/bin/ffmpeg) or a "
                          "command name found on PATH (ffmpeg): no spaces, quotes or shell characters")
    if p.ffmpeg_env and not p.ffmpeg:
        raise PresetError(f"{where}: ffmpeg_env is set but ffmpeg is not: name the command the lines put on PATH "
                          "(ffmpeg = \"ffmpeg\")")
    for line in p.ffmpeg_env:
        if any(c in line for c in "\n\r\0"):
            raise PresetError(f"{where}: ffmpeg_env lines must be single lines without NUL, got {line!r}")


def _check_numbers(p: Preset, where: str) -> None:
    if not 0 < p.port < 65536:
        raise PresetError(f"{where}: port {p.port} is not a TCP port")
    if not 0 <= p.keep_connection_min <= MAX_KEEP_CONNECTION_MIN:
        raise PresetError(f"{where}: keep_connection_min must be 0 (no kept connection) to {MAX_KEEP_CONNECTION_MIN} "
                          f"minutes, got {p.keep_connection_min}")


def _check_unconfirmed(p: Preset, where: str) -> None:
    for entry in p.unconfirmed:
        fact, _, partition = entry.partition(":")
        if fact not in FACTS:
            raise PresetError(f"{where}: unconfirmed {entry!r} is not a fact of a preset; facts: {', '.join(FACTS)} "
                              "(or FACT:PARTITION)")
        if partition and partition not in p.partitions:
            raise PresetError(f"{where}: unconfirmed {entry!r} names no partition of [partitions] "
                              f"({', '.join(p.partitions) or 'none'})")


def unconfirmed_summary(preset: Preset) -> str:
    """One line for the faces: which facts to check with the site, partitions grouped after their fact;
    empty when every fact has a source."""
    if not preset.unconfirmed:
        return ""
    grouped: dict[str, list[str]] = {}
    for entry in preset.unconfirmed:
        fact, _, partition = entry.partition(":")
        grouped.setdefault(fact, [])
        if partition:
            grouped[fact].append(partition)
    words = [f"{fact} ({', '.join(parts)})" if parts else fact for fact, parts in grouped.items()]
    return f"{UNCONFIRMED_NOTE}: {', '.join(words)}"


def _check_billing(p: Preset, where: str) -> None:
    if p.billing:
        _one_of(where, "billing", p.billing, BILLING)
    if p.allocation_format:
        _one_of(where, "allocation_format", p.allocation_format, ALLOCATION_FORMATS)
    if bool(p.allocation_command) != bool(p.allocation_format):
        raise PresetError(f"{where}: allocation_command and allocation_format go together (the command, and which "
                          f"of {', '.join(ALLOCATION_FORMATS)} it prints)")
    if any(not word or any(c in word for c in "\n\r\0") for word in p.allocation_command):
        raise PresetError(f"{where}: allocation_command words must be single non-empty lines")
    for name, part in p.partitions.items():
        if part.billing:
            _one_of(f"{where}: partitions.{name}", "billing", part.billing, BILLING)
        if not part.billing_factor > 0 or part.node_cores < 0 or part.node_gpus < 0:
            raise PresetError(f"{where}: partitions.{name}: billing_factor must be above 0 and node_cores, node_gpus "
                              f"0 (unknown) or more, got {part.billing_factor}, {part.node_cores}, {part.node_gpus}")


def _check_directive_words(p: Preset, where: str) -> None:
    """Values that go into scheduler directives (`#SBATCH --output=<workdir>/...`, `--partition=...`), where a
    space, quote, '%' or newline would break the line or the job script: refused here, naming the key."""
    if p.gpu_request and not re.fullmatch(r"[a-z]{1,16}", p.gpu_request):  # which words: the scheduler's
        raise PresetError(f"{where}: gpu_request {p.gpu_request!r} is not a word (gpus, gres, ngpus, none ...)")
    workdir = p.workdir
    if workdir and (".." in workdir.split("/") or not all(c.isalnum() or c in _WORKDIR_PUNCTUATION for c in workdir)):
        raise PresetError(f"{where}: workdir {workdir!r} may hold only letters, digits and / _ . - + @ (no spaces, "
                          "quotes, shell characters or '..'): it is written into the job script's directives")
    words = {"account": p.account, "partition_cpu": p.partition_cpu, "partition_gpu": p.partition_gpu}
    for name, part in p.partitions.items():
        words |= {f"partitions.{name} (its name)": name, f"partitions.{name}: partition": part.partition,
                  f"partitions.{name}: qos": part.qos}
    for key, value in words.items():
        if not SAFE_VALUE.match(value):
            raise PresetError(f"{where}: {key} {value!r} may hold only letters, digits, '_', '-', '.' and '+'")


def _check_partitions(p: Preset, where: str) -> None:
    for default in (p.partition_cpu, p.partition_gpu):
        if p.partitions and default and default not in p.partitions:
            raise PresetError(f"{where}: default partition {default!r} is not in [partitions] "
                              f"({', '.join(p.partitions)})")
    for name, part in p.partitions.items():
        pwhere = f"{where}: partitions.{name}"
        _one_of(pwhere, "kind", part.kind, KINDS)
        # "OPTIX+CPU": the GPUs and the node's cores together.
        _one_of(pwhere, "cycles_device", part.cycles_device.removesuffix("+CPU"), CYCLES_DEVICES)
        if part.arch:
            _one_of(pwhere, "arch", part.arch, ARCHES)
        if part.kind == "gpu" and part.cycles_device == "CPU":
            raise PresetError(f"{pwhere}: a gpu partition needs a GPU cycles_device ({', '.join(CYCLES_DEVICES[1:])})")
        if part.finish and part.finish not in p.partitions:
            raise PresetError(f"{pwhere}: finish {part.finish!r} is not in [partitions] ({', '.join(p.partitions)})")
        if part.finish and p.partitions[part.finish].finish not in ("", part.finish):
            raise PresetError(f"{pwhere}: finish {part.finish!r} sends its own finish step elsewhere; name the "
                              "partition where it ends up")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"preset {path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise PresetError(f"preset {path}: cannot be read: {exc}") from exc


def with_base(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A user preset may name a built-in `base` and set only what differs (user, account, workdir...),
    so fixes to the built-in catalogue still reach it. Only built-ins can be a base: no chains, no loops."""
    base = data.get("base")
    if base is None or base == "":  # "" is how a full preset written out field by field says "no base"
        return {k: v for k, v in data.items() if k != "base"}
    if not isinstance(base, str) or not (BUILTIN_DIR / f"{base}.toml").is_file() or not _NAME.match(base):
        known = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
        raise PresetError(f"preset {path}: base {base!r} is not a built-in preset ({known})")
    inherited = _read_toml(BUILTIN_DIR / f"{base}.toml")
    inherited.pop("base", None)
    return {**inherited, **data}


def load_preset_file(path: Path) -> Preset:
    preset = preset_from_dict(with_base(_read_toml(path), path), str(path))
    if preset.name != path.stem:
        raise PresetError(f"preset {path}: name {preset.name!r} must match the file name {path.stem!r}")
    return preset


def preset_files() -> dict[str, Path]:
    """Every preset file by name; a user's file replaces a built-in of the same name."""
    files: dict[str, Path] = {}
    for directory in (BUILTIN_DIR, user_presets_dir()):
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                files[path.stem] = path
    return files


def load_preset(name: str) -> Preset:
    files = preset_files()
    if name not in files:
        known = ", ".join(sorted(files)) or "(none)"
        raise PresetError(f"unknown preset {name!r}; known presets: {known} (user presets: {user_presets_dir()})")
    return load_preset_file(files[name])


def all_presets() -> list[Preset]:
    return [load_preset_file(path) for path in preset_files().values()]
