"""The cluster tree is the user's alone: `<workdir>/braas-hpc-<user>`, mode 0700, checked before use.

Workdirs are often project directories that every member of the project can write. Another member
must not be able to plant anything the user's jobs would run or read (a Blender, a script, a store
file) nor read the user's scenes and frames. So the root carries the user name (members never meet
each other's root), is created 0700 (every remote command runs under `umask 077`), and before each use
the root and the two levels below it are checked in one command: anything another user owns, anyone
else can write, or a symbolic link there stops the client with what it found and how to fix it.
Deeper files are checked where they are used (store files by hash, the render task and Blender by the
job itself).
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Sequence

from .errors import BraasError, UsageError
from .paths import data_dir
from .presets import Preset
from .transport import Transport, target_for
from .transport.sshconfig import resolve
from .user_presets import how_to_set

ROOT_PREFIX = "braas-hpc-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
CHECK_DEPTH = 2  # root/jobs/<job>, root/store/<ab>, root/scripts/<version>, root/blender/<build>

# $1 the root, the rest directories to create inside it once it checked out. Prints one line per
# finding ("L|O|W<TAB>owner or mode<TAB>path"); creates nothing under a root that has any.
_ENSURE_SCRIPT = r'''r="$1"; shift
if [ ! -e "$r" ] && [ ! -L "$r" ]; then mkdir -p -- "${r%/*}" && mkdir -m 700 -- "$r" || exit 1; fi
bad=$(find "$r" -maxdepth 2 \( -type l -printf 'L\t%u\t%p\n' \) -o \( ! -uid "$(id -u)" -printf 'O\t%u\t%p\n' \) \
  -o \( -perm /022 -printf 'W\t%M\t%p\n' \) 2>&1) || { printf '%s\n' "$bad" >&2; exit 1; }
if [ -n "$bad" ]; then printf '%s\n' "$bad" | head -n 20; exit 0; fi
chmod 700 -- "$r" && { [ "$#" = 0 ] || mkdir -p -- "$@"; }'''


class UntrustedTree(BraasError):
    """Part of the cluster tree is not the user's alone: nothing was run or sent."""


def remote_user(preset: Preset) -> str:
    """The login name on the cluster: the preset's, else what OpenSSH would use (~/.ssh/config, then the
    local name). It only names the root; the ownership check is what protects it."""
    if preset.user:
        return preset.user
    try:
        return resolve(target_for(preset))[-1].user
    except Exception:  # noqa: BLE001 - no ssh config library or an unreadable config: OpenSSH's default
        return getpass.getuser()


def root_name(user: str) -> str:
    """`braas-hpc-<user>`, with anything unusual in the name replaced (it goes into paths and scripts)."""
    return ROOT_PREFIX + (_UNSAFE.sub("_", user) or "user")


WORKDIR_PLACEHOLDER = "<workdir>"  # a dry run's root of a preset without a workdir yet


def remote_root(preset: Preset, placeholder: bool = False) -> str:
    """`<workdir>/braas-hpc-<user>` on a cluster (the user's alone: see core.tree), `<data dir>/local/braas-hpc`
    on this computer. A cluster preset without a workdir is refused (never guessed)."""
    if preset.is_local:
        return f"{(preset.workdir or str(data_dir() / 'local')).rstrip('/')}/braas-hpc"
    elif preset.workdir:
        base = preset.workdir
    elif placeholder:  # a dry run shows where the job would go once a workdir is set
        base = WORKDIR_PLACEHOLDER
    else:
        hint = f" (the site documents {preset.workdir_hint})" if preset.workdir_hint else ""
        raise UsageError(f"preset {preset.name} has no working directory{hint}: braas-hpc workdir {preset.name} "
                         f"lists candidates; then {how_to_set(preset, 'workdir', 'PATH')}")
    return f"{base.rstrip('/')}/{root_name(remote_user(preset))}"


def _finding(line: str) -> str:
    kind, _, rest = line.partition("\t")
    detail, _, path = rest.partition("\t")
    if kind == "L":
        return f"{path} is a symbolic link (owner {detail})"
    if kind == "O":
        return f"{path} is owned by {detail}, not by you"
    if kind == "W":
        return f"{path} can be written by other users (mode {detail})"
    return line


def ensure_argv(root: str, dirs: Sequence[str] = ()) -> list[str]:
    """The command that checks the root (creating it 0700 when missing) and then creates `dirs` in it;
    it prints what it found wrong, and then creates nothing."""
    return ["sh", "-c", _ENSURE_SCRIPT, "sh", root, *dirs]


async def ensure_root(transport: Transport, root: str, dirs: Sequence[str] = ()) -> None:
    """Create the root 0700 when missing, refuse it when it is not the user's alone, then create `dirs`
    inside it; one remote command."""
    done = await transport.run(ensure_argv(root, dirs))
    refuse_findings(root, done.stdout)


def refuse_findings(root: str, answer: str) -> None:
    """Raise UntrustedTree when the check's answer (ensure_argv's stdout) found anything."""
    findings = [_finding(line) for line in answer.splitlines() if line.strip()]
    if findings:
        raise UntrustedTree(
            "the braas-hpc directory on the cluster is not yours alone, so nothing was sent or run:\n  "
            + "\n  ".join(findings)
            + f"\nAnother user could make your jobs run their code or read your scenes. Look at what it holds; "
            f"then move it aside (mv {root} {root}.untrusted) and braas-hpc makes a fresh {root} on the next "
            "run; for a directory of yours that is only too open, run chmod go-w on it.")
