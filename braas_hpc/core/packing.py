"""Packing: a copy of the user's scene with its resources packed, made by Blender in a subprocess;
or (directory mode) the scene and its dependency tree, traced and copied by blender-asset-tracer.

The user's file is only read; the copy is written elsewhere (the existing add-on packed the live
session next to the user's file as a side effect).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blender_asset_tracer import trace
from blender_asset_tracer.blendfile.exceptions import BlendFileError
from blender_asset_tracer.pack import Packer
from blender_asset_tracer.trace import expanders, file_sequence
from blender_asset_tracer.trace.result import BlockUsage

from .blender_version import check_can_open
from .errors import BraasError, UsageError
from .local_blender import local_blender, run_blender

# BAT logs each missing file as a warning; we report them ourselves, with the data-block that uses them.
logging.getLogger("blender_asset_tracer").addHandler(logging.NullHandler())


def _node_trees(block: Any) -> Iterator[Any]:
    """The node tree an ID owns, followed to what it uses. blender-asset-tracer 1.23 reads the field
    `compositing_node_group` of every ID in a file saved by Blender 5.x (only scenes have it), so the
    materials of linked data lost their images; here each ID is read by the field it has."""
    for field in (b"nodetree", b"compositing_node_group"):
        tree = block.get_pointer(field, None) if block.dna_type.has_field(field) else None
        if tree is not None:
            yield from expanders._expand_generic_nodetree(tree)  # noqa: SLF001


if hasattr(expanders, "_expand_generic_nodetree_id"):
    expanders._expand_generic_nodetree_id = _node_trees  # noqa: SLF001 - the one expander BAT gets wrong

PACK_SCRIPT = Path(__file__).resolve().parents[1] / "blender_scripts" / "pack_scene.py"
PACK_TIMEOUT_S = 900


@dataclass(frozen=True)
class PackReport:
    packed_images: int
    output: Path
    unpacked: tuple[str, ...] = ()  # data-blocks still reading files (only with keep_unpacked)


class UnreadableBlend(UsageError):
    """blender-asset-tracer cannot read the scene or a library it links."""


class CannotPack(UsageError):
    """The scene uses files Blender cannot pack into one .blend (sequences, movies, caches, ...)."""

    def __init__(self, scene: Path, blocks: list[str]) -> None:
        self.blocks = blocks
        shown = ", ".join(blocks[:4]) + (f" and {len(blocks) - 4} more" if len(blocks) > 4 else "")
        super().__init__(f"{scene.name} uses files Blender cannot pack into one .blend ({shown})")


async def pack_scene(scene: Path, output: Path, keep_unpacked: bool = False) -> PackReport:
    """Write `output`, a packed copy of `scene`. Missing files raise UsageError listing each one; files
    Blender cannot pack raise CannotPack, unless `keep_unpacked` (the copy still reads them from disk).

    Blender runs as a child process that is killed when the caller is cancelled (the add-on's Abort)
    or packing overruns its time, so no Blender is left packing for nobody."""
    blender = local_blender()
    # The packed copy is saved by this Blender: an older one than the scene's would drop what it does not know.
    await asyncio.to_thread(check_can_open, scene, tuple(blender), "packs the scene")
    output.parent.mkdir(parents=True, exist_ok=True)
    report_path = output.with_suffix(".pack.json")
    argv = [*blender, "-b", "-Y", str(scene), "-P", str(PACK_SCRIPT), "--",
            "--out", str(output), "--report", str(report_path), *(["--keep-unpacked"] if keep_unpacked else [])]
    returncode, stdout, stderr = await run_blender(argv, PACK_TIMEOUT_S, f"packing {scene}")
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    report_path.unlink(missing_ok=True)
    if returncode == 3 and report:
        lines = "\n".join(f"  {m['block']}: {m['path']}" for m in report["missing"])
        raise UsageError(f"{scene} uses files that do not exist; fix or remove them before submitting:\n{lines}")
    if returncode == 4 and report:
        raise CannotPack(scene, [u["block"] for u in report["unpackable"]])
    text = (stderr or stdout).decode(errors="replace")
    # Blender stops with "Error: ... <file>" when it cannot read the file it was given; the script's 5 is
    # the same for a file it opened as its start-up scene instead.
    refused = [line for line in text.splitlines() if line.startswith("Error:") and str(scene) in line]
    if returncode == 5 or (returncode != 0 and report is None and refused):
        why = refused[0].removeprefix("Error:").strip() if refused else "not a .blend file Blender can read"
        raise UsageError(f"Blender could not open {scene}: the file is damaged or not a .blend file ({why})")
    if returncode != 0 or report is None or not output.is_file():
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise BraasError(f"Blender could not pack {scene} (exit {returncode}):\n{tail}")
    return PackReport(packed_images=int(report.get("packed_images", 0)), output=output,
                      unpacked=tuple(u["block"] for u in report.get("unpackable", [])))


# ---- directory mode and the pack cache: blender-asset-tracer reads .blend files without Blender ----

MAIN_BLEND = "scene.blend"  # the job script opens in/scene.blend in both modes
_BLOCK_KINDS = {"IM": "Image", "LI": "Library", "SO": "Sound", "VF": "Font", "MC": "Movie clip", "VO": "Volume",
                "CF": "Cache file", "ME": "Mesh", "OB": "Object", "SC": "Scene", "PA": "Particles"}


@dataclass(frozen=True)
class StagedTree:
    files: dict[str, Path]  # path inside in/ -> staged local file
    outside: tuple[str, ...]  # dependencies from outside the project, moved under _outside_project/
    sources: dict[Path, Path]  # staged file -> the user's file it is an unchanged copy of
    copies: frozenset[str] = frozenset()  # paths inside in/ Blender opens read-write (store files are read-only)

    def digest(self, staged: Path, cached: Callable[[Path], str], plain: Callable[[Path], str]) -> str:
        """Hash through the user's original when the staged file is a plain copy of it, so the hash
        cache (keyed by the user's paths) spares re-reading unchanged textures on every submit."""
        source = self.sources.get(staged)
        return cached(source) if source else plain(staged)


def _block_label(usage: BlockUsage) -> str:
    raw = usage.block_name.decode("utf-8", "replace")
    kind = _BLOCK_KINDS.get(raw[:2], raw[:2])
    return f"{kind} '{raw[2:]}' in {usage.block.bfile.filepath.name}"


def _usages(scene: Path) -> dict[Path, list[BlockUsage]]:
    """Every file the scene uses (libraries followed recursively), with the data-blocks using it."""
    found: dict[Path, list[BlockUsage]] = {}
    try:
        for usage in trace.deps(scene):
            found.setdefault(usage.abspath, []).append(usage)
    except (BlendFileError, OSError, EOFError, ValueError, struct.error) as exc:
        why = f"cannot read {scene} or a file it links: it is damaged or not a .blend file ({exc})"
        raise UnreadableBlend(why) from exc
    return found


def _refuse_missing(scene: Path, missing: set[Path], usages: dict[Path, list[BlockUsage]]) -> None:
    if not missing:
        return
    lines = [f"  {_block_label(u)}: {path}" for path in sorted(missing) for u in usages.get(path, [])] or [
        f"  {path}" for path in sorted(missing)]
    raise UsageError(f"{scene} uses files that do not exist; fix or remove them before submitting:\n"
                     + "\n".join(lines))


def check_missing(scene: Path) -> None:
    """Refuse (UsageError, each file with its data-block) when the scene uses files that do not exist:
    images, sequences, UDIM tiles, libraries, caches. Nothing is copied."""
    usages = _usages(scene)
    with Packer(scene, scene.parent, str(scene.parent), noop=True) as packer:
        packer.strategise()
        _refuse_missing(scene, set(packer.missing_files), usages)


# Blender (4.2-5.0) opens a geometry-nodes bake's meta/*.json read-write and reads nothing of a bake it
# cannot open so: those files get a private copy in in/, not a read-only link into the store.
_BAKE_FILE = re.compile(r"(?:^|/)(?:meta/[^/]+\.json|blobs/[^/]+\.blob)\Z")


def _cache_dir_name(scene: Path, name: str) -> str:
    """Blender finds the scene's disk point caches (particles, cloth, soft body) in blendcache_<file name>/
    beside the .blend, by the name it is opened as: in/scene.blend looks in blendcache_scene/. Bakes
    in sub-folders keep their place: their folder is written in the .blend."""
    own = f"blendcache_{scene.stem}/"
    if scene.stem != Path(MAIN_BLEND).stem and name.startswith(own) and "/" not in name[len(own):]:
        return f"blendcache_{Path(MAIN_BLEND).stem}/{name[len(own):]}"
    return name


def stage_tree(scene: Path, staging: Path) -> StagedTree:
    """Copy the scene and what it uses into `staging`, paths rewritten in the copies (BAT's Packer).

    The project is the scene's directory: relative paths inside it keep their layout; anything else
    goes under `_outside_project/` and the copied .blend files point there. The user's files are only read.
    """
    usages = _usages(scene)
    with Packer(scene, scene.parent, str(staging)) as packer:
        packer.strategise()
        _refuse_missing(scene, set(packer.missing_files), usages)
        packer.execute()
        main = Path(packer.output_path)
    files: dict[str, Path] = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != "pack-info.txt"):
        name = MAIN_BLEND if path == main else _cache_dir_name(scene, path.relative_to(staging).as_posix())
        if name in files:
            raise UsageError(f"{scene}: a dependency is also named {MAIN_BLEND} next to the scene; rename it")
        files[name] = path
    outside = tuple(sorted(n for n in files if n.startswith("_outside_project/")))
    sources = {path: src for name, path in files.items() if (src := _copied_from(scene.parent, staging, path))}
    return StagedTree(files, outside, sources, frozenset(n for n in files if _BAKE_FILE.search(n)))


def _copied_from(project: Path, staging: Path, staged: Path) -> Path | None:
    """The user's file a staged file was copied from unchanged (BAT copies with its size and mtime and
    rewrites only .blend files), or None."""
    rel = staged.relative_to(staging)
    if rel.parts[0] == "_outside_project":
        original = Path(staged.anchor, *rel.parts[1:])
    else:
        original = project / rel
    try:
        a, b = staged.stat(), original.stat()
    except OSError:
        return None
    return original if (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns) else None


def pack_key(scene: Path, digest: Callable[[Path], str]) -> str:
    """What a packed copy is made of: the scene, every file it uses, the pack script and Blender.

    Blender does not write the same bytes twice (it stores memory addresses), so a packed copy is
    reused by this key instead of by its own hash.
    """
    inputs = sorted((str(path), digest(path)) for usage_path in _usages(scene)
                    for path in _existing(usage_path))
    material = {"scene": digest(scene), "inputs": inputs, "script": digest(PACK_SCRIPT),
                "blender": local_blender()}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _existing(path: Path) -> list[Path]:
    """The files behind a dependency: itself, or the frames of an image sequence or UDIM set."""
    if path.is_file():
        return [path]
    try:
        return [p for p in file_sequence.expand_sequence(path) if p.is_file()]
    except file_sequence.DoesNotExist:
        return []
