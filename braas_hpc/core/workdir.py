"""Finding a cluster's working directory: asked of the cluster, shown to the user, set only on their word.

Candidates come from the site's own command (IT4I `it4i-get-project-dir`), from variables the login
shell sets (TACC `$SCRATCH`, `$WORK`) and from the documented patterns in the preset's workdir_hint
(`/scratch/{account}`, `/mnt/proj<1-3>/{account}`). Each says where it came from and whether it
exists and is writable. Nothing is ever written without an explicit choice (`set_workdir`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import PresetError, UsageError
from .paths import write_private
from .presets import Preset, preset_from_dict, with_base
from .transport import Transport
from .user_presets import save_user_preset, user_preset_path

_VARIABLE = re.compile(r"\$([A-Z_][A-Z0-9_]*)")
_PATH = re.compile(r"(?<![\w$])/[^\s(),;]+")
_RANGE = re.compile(r"<(\d+)-(\d+)>")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9/_.+@-]*\Z")
# Variables from a login shell (TACC sets $SCRATCH there): "braas-env NAME=value" lines.
_ENV_SCRIPT = 'for v; do printf "braas-env %s=%s\\n" "$v" "$(printenv "$v")"; done'
_CHECK_SCRIPT = 'for d; do e=0; w=0; [ -d "$d" ] && e=1; [ -w "$d" ] && w=1; printf "%s\\t%s\\t%s\\n" "$d" $e $w; done'


@dataclass(frozen=True)
class Candidate:
    path: str
    source: str  # where it came from: the site command, "$SCRATCH", "hint /scratch/{account}", "preset"
    exists: bool = False
    writable: bool = False

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def hint_patterns(preset: Preset) -> list[tuple[str, str]]:
    """(path, source) from the hint's documented patterns, placeholders filled; unknowable ones dropped."""
    found = []
    values = {"account": preset.account, "user": preset.user}
    for pattern in _PATH.findall(preset.workdir_hint):
        pattern = pattern.rstrip(".")
        needed = set(re.findall(r"\{(\w+)\}", pattern))
        if needed - set(values) or any(not values[k] for k in needed):
            continue  # e.g. no account in the preset yet: the user is shown the hint instead
        ranges = _RANGE.search(pattern)
        expanded = ([_RANGE.sub(str(n), pattern, count=1) for n in range(int(ranges[1]), int(ranges[2]) + 1)]
                    if ranges else [pattern])
        for path in expanded:
            for variant in dict.fromkeys((path.format(**values), path.format(**{k: v.lower() for k, v in
                                                                                values.items()}))):
                if _SAFE_PATH.match(variant):
                    found.append((variant, f"hint {pattern}"))
    return found


def _command(preset: Preset) -> list[str]:
    values = {"account": preset.account, "user": preset.user}
    try:
        return [word.format(**values) for word in preset.workdir_command]
    except (KeyError, IndexError):
        return []


async def find_workdir(preset: Preset, transport: Transport) -> list[Candidate]:
    """Every candidate the site documents, checked on the cluster (three commands in all)."""
    if preset.is_local:
        raise UsageError("the local preset keeps its jobs in the data directory; it has no cluster workdir")
    found: list[tuple[str, str]] = []
    if preset.workdir:
        found.append((preset.workdir, "preset"))
    command = _command(preset)
    if command and all(command):  # a command word left empty (no account yet) is not run
        done = await transport.run(["bash", "-lc", '"$@"', "bash", *command], check=False, timeout=60)
        found += [(line.strip(), " ".join(command)) for line in done.stdout.splitlines()
                  if line.strip().startswith("/")]
    variables = sorted(set(_VARIABLE.findall(preset.workdir_hint)))
    if variables:
        done = await transport.run(["bash", "-lc", _ENV_SCRIPT, "bash", *variables], check=False, timeout=60)
        for line in done.stdout.splitlines():
            name, _, value = line.removeprefix("braas-env ").partition("=")
            if line.startswith("braas-env ") and value.startswith("/"):
                found.append((value.strip(), f"${name}"))
    found += hint_patterns(preset)
    unique: dict[str, str] = {}
    for path, source in found:
        if _SAFE_PATH.match(path.rstrip("/") or "/"):
            unique.setdefault(path.rstrip("/") or "/", source)
    return await check_dirs(transport, unique)


async def check_dirs(transport: Transport, paths: dict[str, str]) -> list[Candidate]:
    if not paths:
        return []
    done = await transport.run(["sh", "-c", _CHECK_SCRIPT, "sh", *paths], check=False)
    state = {}
    for line in done.stdout.splitlines():
        path, exists, writable = (line.split("\t") + ["", "", ""])[:3]
        state[path] = (exists == "1", writable == "1")
    return [Candidate(path, source, *state.get(path, (False, False))) for path, source in paths.items()]


def _set_in_text(text: str, path: str) -> str:
    """The user's file with its top-level workdir set (comments and layout kept)."""
    line = f"workdir = {tomllib_string(path)}"
    lines = text.splitlines()
    first_table = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    for i in range(first_table):
        if re.match(r"^\s*workdir\s*=", lines[i]):
            lines[i] = line
            break
    else:
        lines.insert(first_table, line)
    return "\n".join(lines) + "\n"


def tomllib_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def set_workdir(preset: Preset, transport: Transport, path: str) -> Path:
    """Write the chosen workdir into the user's preset file: only an existing, writable directory."""
    if not _SAFE_PATH.match(path):
        raise UsageError(f"workdir {path!r} must be an absolute path of letters, digits and / _ . + @ -")
    (checked,) = await check_dirs(transport, {path: "chosen"})
    if not (checked.exists and checked.writable):
        raise UsageError(f"{path} on {preset.name} is {'not writable' if checked.exists else 'not a directory'}; "
                         "create it or choose another")
    target = user_preset_path(preset.name)
    if not target.is_file():  # a built-in: the user's file names it as base and sets only the workdir
        save_user_preset(preset.name, {"workdir": path}, base=preset.name)
        return target
    text = _set_in_text(target.read_text(encoding="utf-8"), path)
    try:
        preset_from_dict(with_base(tomllib.loads(text), target), str(target))
    except (tomllib.TOMLDecodeError, PresetError) as exc:
        raise PresetError(f"setting workdir in {target} would make it invalid: {exc}") from exc
    temp = target.with_name(f".{target.name}.part")
    write_private(temp, text)
    temp.replace(target)
    return target
