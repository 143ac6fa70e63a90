"""Finding Blender on this computer, for packing scenes and for the `local` preset."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path

from .errors import BraasError, UsageError

BPY_LAUNCHER = Path(__file__).resolve().parents[1] / "bpy_blender.py"
# Set by the add-on at registration: the executable of the Blender it runs in (bpy.app.binary_path).
# Inside a downloaded Blender, sys.executable is Blender's bundled Python, which cannot import bpy, so
# the running Blender itself is the one to pack and render with: it is also the version the artist uses.
_running: str = ""


def use_running_blender(binary_path: str) -> None:
    """Remember the Blender this process runs in ("" to forget it, as the add-on does when disabled)."""
    global _running
    _running = binary_path if binary_path and os.path.isfile(binary_path) else ""


def local_blender() -> list[str]:
    """The command that runs Blender here: $BRAAS_HPC_BLENDER, the Blender the add-on runs in, `blender`
    on PATH, or the bpy module."""
    configured = os.environ.get("BRAAS_HPC_BLENDER", "").strip()
    if configured:
        return shlex.split(configured)
    if _running:
        return [_running]
    found = shutil.which("blender")
    if found:
        return [found]
    if importlib.util.find_spec("bpy") is not None:
        # Blender as a Python module (pip install bpy): our launcher speaks Blender's command line.
        return [sys.executable, str(BPY_LAUNCHER)]
    raise UsageError(
        "no Blender found on this computer: install Blender 4.2 or newer and put `blender` on PATH, "
        "set BRAAS_HPC_BLENDER to its command, or install Blender as a Python module with the render extra "
        "(`pip install 'braas-hpc[render]'`; Blender publishes it for Python 3.11 and 3.13 only)"
    )


async def run_blender(argv: list[str], timeout_s: float, what: str) -> tuple[int, bytes, bytes]:
    """A Blender child process run to its end: (exit status, stdout, stderr). Killed when the caller is
    cancelled (the add-on's Abort) or after `timeout_s`, so no Blender is left working for nobody."""
    process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError as exc:
        raise BraasError(f"{what} took longer than {timeout_s} s and was stopped") from exc
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
    return process.returncode if process.returncode is not None else -1, stdout, stderr
