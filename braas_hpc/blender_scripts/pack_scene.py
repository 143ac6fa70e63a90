"""Runs inside Blender on the user's computer: saves a copy of the open .blend with its resources packed.

Usage: blender -b SCENE.blend -Y -P pack_scene.py -- --out COPY.blend --report REPORT.json

The user's file is only read: the copy is written with save_as_mainfile(copy=True) to another path.
Exit 0 when packed, 3 when files the scene uses are missing (listed in the report), 1 on other errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import bpy

# Data-blocks that point at external files, with the attribute that holds the path.
_EXTERNAL = (("images", "Image"), ("sounds", "Sound"), ("fonts", "Font"), ("movieclips", "Movie clip"),
             ("volumes", "Volume"), ("cache_files", "Cache file"), ("libraries", "Library"))


def _script_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="pack_scene.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", required=True)
    return parser.parse_args(argv)


def _needs_file(block: object) -> bool:
    if getattr(block, "packed_file", None) is not None:
        return False
    if getattr(block, "source", "FILE") not in ("FILE", "MOVIE"):
        return False  # generated images, sequences and UDIM tiles are checked by the transfer issue
    path = getattr(block, "filepath", "")
    return bool(path) and path != "<builtin>"


def missing_files() -> list[dict[str, str]]:
    missing = []
    for collection, label in _EXTERNAL:
        for block in getattr(bpy.data, collection):
            if not _needs_file(block):
                continue
            library = getattr(block, "library", None)
            path = bpy.path.abspath(block.filepath, library=library)
            if not os.path.isfile(path):
                missing.append({"block": f"{label} '{block.name}'", "path": path})
    return missing


def _write_report(path: str, report: dict[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=1)


def main() -> int:
    args = _script_args()
    if not bpy.data.filepath:
        # Blender runs -P scripts on its start-up scene when the .blend could not be opened.
        print("pack_scene.py: the .blend file could not be opened", file=sys.stderr)
        return 1
    missing = missing_files()
    if missing:
        _write_report(args.report, {"missing": missing})
        return 3
    bpy.ops.file.pack_all()
    packed = sum(1 for image in bpy.data.images if image.packed_file is not None)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(args.out), copy=True, compress=False)
    _write_report(args.report, {"missing": [], "packed_images": packed, "libraries": len(bpy.data.libraries)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
