"""A user's own presets, as the add-on's preferences edit them: files in `<config dir>/presets/`, the
same ones the CLI reads, so a cluster set up in Blender works with `braas-hpc` and the other way round.

A preset added from the catalogue is written as `base = "<built-in>"` plus the values the user set, so
fixes to the built-in reach it. Every write is validated first and lands atomically: a bad value is
refused with the schema's message and the previous file stays as it was.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from .errors import PresetError
from .paths import private_dir, user_presets_dir
from .presets import BUILTIN_DIR, Preset, load_preset_file, preset_from_dict, valid_name, with_base

# What the preferences panel lets a user set; the rest of a preset is the site's, kept in its file.
EDITABLE = ("title", "host", "port", "user", "key_file", "ssh_backend", "proxy_jump", "known_hosts", "account",
            "partition_cpu", "partition_gpu", "workdir", "blender", "scheduler")


def user_preset_path(name: str) -> Path:
    if not valid_name(name):
        raise PresetError(f"preset name {name!r} must be lower-case letters, digits, '-', '_' or '.' "
                          "(at most 64, starting with a letter or digit)")
    return user_presets_dir() / f"{name}.toml"


def is_builtin(preset: Preset) -> bool:
    """Whether the preset is read from the package's own catalogue (not a file of the user's)."""
    return not preset.source or Path(preset.source).parent == BUILTIN_DIR


def how_to_set(preset: Preset, option: str, value: str) -> str:
    """How the user sets one key of this preset: in their own file, or by the command that writes one;
    never by editing a file inside the installed package."""
    if is_builtin(preset):
        return f"braas-hpc presets add {preset.name} --base {preset.name} --{option} {value}"
    return f"set {option.replace('-', '_')} in {preset.source}"


def catalogue() -> list[str]:
    """Names of the built-in presets a user can start from (the local preset needs no setting up)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml") if p.stem != "local")


def user_preset_names() -> list[str]:
    directory = user_presets_dir()
    return sorted(p.stem for p in directory.glob("*.toml")) if directory.is_dir() else []


def read_user_values(name: str) -> dict[str, Any]:
    """The keys the user's file itself sets (not what it inherits)."""
    path = user_preset_path(name)
    if not path.is_file():
        raise PresetError(f"no user preset {name!r} in {path.parent}")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def save_user_preset(name: str, values: dict[str, Any], base: str = "") -> Preset:
    """Write (or replace) a user preset; empty strings mean "not set" (inherited or the default)."""
    path = user_preset_path(name)
    data: dict[str, Any] = {"name": name}
    if base:
        data["base"] = base
    unknown = sorted(set(values) - set(EDITABLE))
    if unknown:
        raise PresetError(f"preset {name}: {', '.join(unknown)} cannot be set here; edit {path} instead")
    data.update({key: value for key, value in values.items() if value not in ("", None)})
    preset = preset_from_dict(with_base(data, path), str(path))  # refuses a bad value before any write
    private_dir(path.parent)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as stream:
            tomli_w.dump(data, stream)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return preset


def delete_user_preset(name: str) -> None:
    path = user_preset_path(name)
    if not path.is_file():
        raise PresetError(f"no user preset {name!r} in {path.parent} (built-in presets cannot be removed)")
    path.unlink()


def load_user_preset(name: str) -> Preset:
    return load_preset_file(user_preset_path(name))
