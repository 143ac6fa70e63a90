"""The command line each kind of interactive server runs with inside a session (pure: no I/O, no bpy).

`session.run` writes the argv into `command.sh` quoted word by word and `exec`s it, so nothing here is
ever parsed by a shell except the fixed wrapper scripts below, which get every user value as a
positional argument. The node helper exports BRAAS_PORT (and BRAAS_HOST, BRAAS_TOKEN,
BRAAS_SESSION_DIR) to the command: a server listens on $BRAAS_PORT.

- BUILTIN: stock Blender runs `render_server.py` (uploaded into the session directory) on the scene.
- BLENDERPHI: the BlenderPhi build in its interactive mode (docs/blenderphi-protocol.md §4.1), port
  from $BRAAS_PORT. It has no token handshake.
- COMMAND: the user's own command, split like a shell would (shlex); `$BRAAS_PORT`-style references to
  the session variables are filled in on the node, nothing else is expanded.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence

from braas_hpc.core.errors import UsageError
from braas_hpc.core.presets import Preset

from .records import SessionRecord

BUILTIN, BLENDERPHI, COMMAND = "BUILTIN", "BLENDERPHI", "COMMAND"
KINDS = (BUILTIN, BLENDERPHI, COMMAND)
RENDER_SERVER = "render_server.py"  # its name in the session directory
BLENDERPHI_DEFAULT = "~/blenderphi/blender"  # where the BlenderPhi release notes install it
SESSION_VARIABLES = ("BRAAS_PORT", "BRAAS_HOST", "BRAAS_TOKEN", "BRAAS_SESSION_DIR")

# BlenderPhi's interactive mode and port come from its environment; "~/" is resolved on the node.
_BLENDERPHI_WRAPPER = (
    'export CYCLES_BRAAS_HPC_INTERACTIVE_MODE=1 CYCLES_BRAAS_HPC_SERVER_PORT="$BRAAS_PORT"\n'
    'p=$1; shift\n'
    'case $p in "~/"*) p=$HOME/${p#"~/"} ;; esac\n'
    'exec "$p" "$@"\n'
)
# Replaces $NAME and ${NAME} of the session variables inside each word; the words are never re-split.
_EXPAND_WRAPPER = (
    'for a; do\n'
    '  for v in ' + " ".join(SESSION_VARIABLES) + '; do\n'
    '    a=${a//"\\${$v}"/"${!v}"}; a=${a//"\\$$v"/"${!v}"}\n'
    '  done\n'
    '  set -- "$@" "$a"; shift\n'
    'done\n'
    'exec "$@"\n'
)
# What a user confirms before starting BlenderPhi (CLI --open-port, the panel's popup).
BLENDERPHI_EXPOSURE = (
    "BlenderPhi has no authentication and listens on every network interface of the node: while it runs, "
    "anyone who can reach the node's port can watch your frames and send it material scripts, that is every "
    "user and job on that node and every machine on the cluster's internal network (login nodes, other "
    "compute nodes, other users' jobs). The built-in server checks the session's token instead."
)
_REFERENCE = re.compile(r"\$(\{)?(" + "|".join(SESSION_VARIABLES) + r")(?(1)\})")


def render_server_path(record: SessionRecord) -> str:
    return record.paths.file(RENDER_SERVER)


def cycles_device(preset: Preset, gpu: bool) -> str:
    """What `--cycles-device` gets: the GPU partition's device (OPTIX, CUDA, HIP, ONEAPI...) or CPU.
    The same partition the holding job asked for (`session.holder_spec`)."""
    if not gpu:
        return "CPU"
    return preset.partition(preset.default_partition(True)).cycles_device


def _blendfile(blendfile: str) -> str:
    if not blendfile.strip():
        raise UsageError("no .blend file on the cluster: give its path (or start the session with one)")
    if not posixpath.isabs(blendfile):
        raise UsageError(f"the .blend file on the cluster must be an absolute path, not {blendfile!r}")
    return blendfile


def builtin_argv(blender: str, record: SessionRecord, blendfile: str, device: str) -> list[str]:
    # -Y: scripts embedded in the .blend stay off, as for render jobs; -P runs ours regardless.
    return [blender, "-b", "-Y", _blendfile(blendfile), "-P", render_server_path(record), "--", "--device", device]


def blenderphi_argv(blenderphi: str, record: SessionRecord, blendfile: str, device: str) -> list[str]:
    if not blenderphi.strip():
        raise UsageError("give the path of BlenderPhi's blender on the cluster")
    output = posixpath.join(record.paths.dir, "out", "######")
    return ["sh", "-c", _BLENDERPHI_WRAPPER, "braas-blenderphi", blenderphi,
            "--factory-startup", "--disable-autoexec", "-noaudio", "--background", _blendfile(blendfile),
            "-E", "CYCLES", "--render-output", output, "--render-frame", "1", "--", "--cycles-device", device]


def command_argv(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise UsageError(f"the command cannot be split into words ({error}): {command!r}") from error
    if not words:
        raise UsageError("no command given: type the command to run (its port is $BRAAS_PORT)")
    if any(_REFERENCE.search(word) for word in words):
        return ["bash", "-c", _EXPAND_WRAPPER, "braas-command", *words]
    return words


def with_setup(setup: Sequence[str], argv: list[str]) -> list[str]:
    """`argv` after shell lines such as an installed Blender's `module load` (command.sh has only the
    preset's own env lines)."""
    if not setup:
        return argv
    return ["bash", "-c", "\n".join([*setup, 'exec "$@"', ""]), "braas-setup", *argv]


def require_open_port_ok(kind: str, confirmed: bool, how: str = "pass --open-port") -> None:
    """BlenderPhi only with the user's explicit yes to its open port."""
    if kind == BLENDERPHI and not confirmed:
        raise UsageError(f"{BLENDERPHI_EXPOSURE} To start it anyway, {how}.")


def server_argv(kind: str, preset: Preset, record: SessionRecord, gpu: bool, *, blendfile: str = "",
                command: str = "", blenderphi: str = BLENDERPHI_DEFAULT, blender: str = "",
                setup: Sequence[str] = ()) -> list[str]:
    """The argv for `session.run`. `blender` and `setup` override the preset's Blender command with the
    one `braas-hpc install` recorded (`cluster_blender.installed_blender`) and the lines it needs first."""
    if kind == BUILTIN:
        device = cycles_device(preset, gpu).removesuffix("+CPU")  # the render server takes one device
        argv = builtin_argv(blender or preset.blender or "blender", record, blendfile, device)
        return with_setup(setup, argv)
    if kind == BLENDERPHI:
        return blenderphi_argv(blenderphi, record, blendfile, cycles_device(preset, gpu))
    if kind == COMMAND:
        return command_argv(command)
    raise UsageError(f"unknown interactive type {kind!r}; choose from {', '.join(KINDS)}")

