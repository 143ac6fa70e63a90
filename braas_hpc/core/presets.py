"""Cluster presets: data files validated by one schema.

Built-in presets live in `braas_hpc/core/presets/*.toml`; a user's presets in
`<config dir>/presets/*.toml` (see `paths.user_presets_dir`) and win over a built-in of the same name.
A new site needs a file, not code.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PresetError
from .paths import user_presets_dir

BUILTIN_DIR = Path(__file__).parent / "presets"
SCHEDULERS = ("slurm", "pbs", "local")
SSH_BACKENDS = ("asyncssh", "paramiko", "openssh")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Preset:
    name: str
    scheduler: str
    title: str = ""
    host: str = ""
    port: int = 22
    user: str = ""
    key_file: str = ""
    known_hosts: str = ""  # empty: the user's ~/.ssh/known_hosts
    ssh_backend: str = "asyncssh"
    proxy_jump: str = ""  # OpenSSH ProxyJump syntax, e.g. "me@gateway.example.org"
    ssh_config: str = ""  # empty: ~/.ssh/config when it exists; "none": ignore it
    workdir: str = ""  # empty on `local`: the user's data directory
    account: str = ""
    partition_cpu: str = ""
    partition_gpu: str = ""
    blender: str = "blender"  # the command that starts Blender on the cluster; empty on `local`: found
    env: tuple[str, ...] = field(default_factory=tuple)  # lines run before Blender (module loads)
    default_walltime_min: int = 60
    max_walltime_min: int = 2880
    source: str = ""  # the file it was read from, for messages

    @property
    def is_local(self) -> bool:
        return self.scheduler == "local"


def _check_types(data: dict[str, object], source: str) -> dict[str, object]:
    valid = {f.name: f for f in dataclasses.fields(Preset) if f.name != "source"}
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise PresetError(
            f"preset {source}: unknown key(s) {', '.join(unknown)}; valid keys are: {', '.join(sorted(valid))}"
        )
    checked: dict[str, object] = {}
    for key, value in data.items():
        expected = valid[key].type
        if expected == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif expected == "tuple[str, ...]":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value  # type: ignore[arg-type]
        else:
            ok = isinstance(value, str)
        if not ok:
            raise PresetError(f"preset {source}: {key} must be of type {expected}, got {value!r}")
        checked[key] = value
    return checked


def preset_from_dict(data: dict[str, object], source: str) -> Preset:
    """Validate one preset's data; every problem names the file and the key."""
    checked = _check_types(data, source)
    for required in ("name", "scheduler"):
        if not checked.get(required):
            raise PresetError(f"preset {source}: missing required key {required!r}")
    preset = Preset(**checked, source=source)  # type: ignore[arg-type]
    _check_values(preset)
    return preset


def _check_values(p: Preset) -> None:
    where = f"preset {p.source}"
    if not _NAME.match(p.name):
        raise PresetError(f"{where}: name {p.name!r} must be lower-case letters, digits, '-', '_' or '.'")
    if p.scheduler not in SCHEDULERS:
        raise PresetError(f"{where}: scheduler {p.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if p.ssh_backend not in SSH_BACKENDS:
        raise PresetError(f"{where}: ssh_backend {p.ssh_backend!r} is not one of {', '.join(SSH_BACKENDS)}")
    if not p.is_local:
        for key in ("host", "workdir", "blender"):
            if not getattr(p, key):
                raise PresetError(f"{where}: {key} is required for a {p.scheduler} cluster")
        if not p.workdir.startswith("/") and not p.workdir.startswith("$"):
            raise PresetError(f"{where}: workdir {p.workdir!r} must be an absolute path on the cluster")
    if not 0 < p.port < 65536:
        raise PresetError(f"{where}: port {p.port} is not a TCP port")
    for line in p.env:
        if "\n" in line:
            raise PresetError(f"{where}: env lines must be single lines, got {line!r}")


def load_preset_file(path: Path) -> Preset:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"preset {path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise PresetError(f"preset {path}: cannot be read: {exc}") from exc
    preset = preset_from_dict(data, str(path))
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
