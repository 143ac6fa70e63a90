"""Packing: a copy of the user's scene with its resources packed, made by Blender in a subprocess.

The user's file is only read; the copy is written elsewhere (the existing add-on packed the live
session next to the user's file as a side effect).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BraasError, UsageError
from .local_blender import local_blender

PACK_SCRIPT = Path(__file__).resolve().parents[1] / "blender_scripts" / "pack_scene.py"
PACK_TIMEOUT_S = 900


@dataclass(frozen=True)
class PackReport:
    packed_images: int
    output: Path


def pack_scene(scene: Path, output: Path) -> PackReport:
    """Write `output`, a packed copy of `scene`. Missing files raise UsageError listing each one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    report_path = output.with_suffix(".pack.json")
    argv = [*local_blender(), "-b", "-Y", str(scene), "-P", str(PACK_SCRIPT), "--",
            "--out", str(output), "--report", str(report_path)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PACK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BraasError(f"packing {scene} took longer than {PACK_TIMEOUT_S} s and was stopped") from exc
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    report_path.unlink(missing_ok=True)
    if done.returncode == 3 and report:
        lines = "\n".join(f"  {m['block']}: {m['path']}" for m in report["missing"])
        raise UsageError(f"{scene} uses files that do not exist; fix or remove them before submitting:\n{lines}")
    if done.returncode != 0 or report is None or not output.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BraasError(f"Blender could not pack {scene} (exit {done.returncode}):\n{tail}")
    return PackReport(packed_images=int(report.get("packed_images", 0)), output=output)
