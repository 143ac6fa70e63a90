"""Runs inside Blender on the user's computer: saves a copy of the open .blend with its resources packed.

Usage: blender -b SCENE.blend -Y -P pack_scene.py -- --out COPY.blend --report REPORT.json [--keep-unpacked]

The user's file is only read: the copy is written with save_as_mainfile(copy=True) to another path.
Linked data is made local first, so its images are packed like the scene's own.
Exit 0 when packed, 3 when files the scene uses are missing (listed in the report), 4 when the scene uses
files Blender cannot pack (sequences, movies, caches, bakes; listed in the report as "unpackable", no copy
is written, unless --keep-unpacked), 5 when the .blend could not be opened, 1 on other errors.
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
    # Save the copy even when some files cannot be packed (listed in the report): interactive sessions.
    parser.add_argument("--keep-unpacked", action="store_true")
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


def _make_local() -> list[str]:
    """Make every linked data-block local (relative paths rebased), so one .blend carries it and pack_all
    packs its images. Returns the libraries still in use."""
    if bpy.data.libraries:
        bpy.ops.object.make_local(type="ALL")
    return [f"Library '{lib.name}'" for lib in bpy.data.libraries if lib.users_id]


def _external(label: str, path: str, library: object = None) -> dict[str, str]:
    return {"block": label, "path": bpy.path.abspath(path, library=library) if path else ""}


def _unpacked_blocks() -> list[dict[str, str]]:
    """Data-blocks still reading a file after packing: pack_all leaves sequences, movies, clips, caches."""
    found = []
    for collection, label in _EXTERNAL:
        if collection == "libraries":
            continue
        for block in getattr(bpy.data, collection):
            path = getattr(block, "filepath", "")
            # Blender (4.2-5.0) packs a volume but reads its grids only from the file.
            packed = getattr(block, "packed_file", None) is not None and collection != "volumes"
            if path and path != "<builtin>" and not packed and getattr(block, "source", "FILE") != "GENERATED":
                found.append(_external(f"{label} '{block.name}'", path, block.library))
    return found


def _disk_caches(obj: bpy.types.Object) -> list[dict[str, str]]:
    """Caches and bakes on disk an object reads while it renders (Blender packs none of them but bakes)."""
    found = []
    caches = [(f"particles '{p.name}'", p.point_cache) for p in obj.particle_systems]
    for mod in obj.modifiers:
        label = f"Object '{obj.name}' modifier '{mod.name}'"
        if getattr(mod, "point_cache", None) is not None:
            caches.append((f"modifier '{mod.name}'", mod.point_cache))
        if mod.type == "MESH_CACHE" and os.path.isfile(bpy.path.abspath(mod.filepath)):  # "" is saved as "//"
            found.append(_external(label, mod.filepath))
        elif mod.type == "MULTIRES" and mod.is_external:
            found.append(_external(label + " (external displacement)", ""))
        elif mod.type == "FLUID" and mod.fluid_type == "DOMAIN" and _is_dir(mod.domain_settings.cache_directory):
            found.append(_external(label, mod.domain_settings.cache_directory))
        elif mod.type == "OCEAN" and mod.is_cached:
            found.append(_external(label, mod.filepath))
        elif mod.type == "NODES":
            found += _disk_bakes(label, mod)
    for where, cache in caches:
        if cache.use_disk_cache or cache.use_external:
            found.append(_external(f"Object '{obj.name}' {where} (disk cache)", cache.filepath
                                   if cache.use_external else ""))
    return found


def _is_dir(path: str) -> bool:
    return bool(path) and os.path.isdir(bpy.path.abspath(path))


def _disk_bakes(label: str, mod: object) -> list[dict[str, str]]:
    found = []
    for bake in mod.bakes:
        target = getattr(bake, "bake_target", "INHERIT")  # 4.2 bakes to disk only
        target = getattr(mod, "bake_target", "DISK") if target == "INHERIT" else target
        directory = bake.directory if bake.use_custom_path else mod.bake_directory
        if target == "DISK" and _is_dir(directory):
            found.append(_external(f"{label} bake", directory))
    return found


def unpackable() -> list[dict[str, str]]:
    found = _unpacked_blocks()
    for obj in bpy.data.objects:
        found += _disk_caches(obj)
    for scene in bpy.data.scenes:
        if scene.sequence_editor is not None:
            for strip in _strips(scene.sequence_editor):
                if strip.type in ("IMAGE", "MOVIE"):
                    found.append(_external(f"Scene '{scene.name}' strip '{strip.name}'", ""))
    return found


def _strips(editor: object) -> list[object]:
    # Blender 5.0 renamed sequences_all to strips_all.
    return list(getattr(editor, "strips_all", None) or getattr(editor, "sequences_all", []))


def _write_report(path: str, report: dict[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=1)


def main() -> int:
    args = _script_args()
    if not bpy.data.filepath:
        # Blender runs -P scripts on its start-up scene when the .blend could not be opened.
        print("pack_scene.py: the .blend file could not be opened", file=sys.stderr)
        return 5
    missing = missing_files()
    if missing:
        _write_report(args.report, {"missing": missing})
        return 3
    libraries = _make_local()
    stopped = []
    try:
        bpy.ops.file.pack_all()
    except RuntimeError as exc:
        # 5.x stops at a geometry-nodes bake it cannot pack, already marked packed: nothing tells what
        # was really packed, so the scene is not sent as one file.
        print(f"pack_scene.py: {exc}", file=sys.stderr)
        stopped = [{"block": f"packing stopped ({str(exc).strip()})", "path": ""}]
    left = [{"block": name, "path": ""} for name in libraries] + stopped + unpackable()
    if left and not args.keep_unpacked:
        _write_report(args.report, {"missing": [], "unpackable": left})
        return 4
    packed = sum(1 for image in bpy.data.images if image.packed_file is not None)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(args.out), copy=True, compress=False)
    _write_report(args.report, {"missing": [], "packed_images": packed, "libraries": len(bpy.data.libraries),
                                "unpackable": left})
    return 0


if __name__ == "__main__":
    sys.exit(main())
