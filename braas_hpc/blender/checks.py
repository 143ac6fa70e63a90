"""The check before any upload, on the main thread (it reads bpy data; only stat calls, no network)."""

from __future__ import annotations

import os

import bpy

from ..core.blender_version import cluster_warning, dotted, parse_version_line
from ..core.cluster_blender import installed_blender, record_path
from ..core.errors import BraasError, UsageError
from ..core.frames import parse_frames
from ..core.scene_settings import SceneSettings

LISTED = 10  # missing files named in the message; the rest are counted


def scene_file() -> str:
    if not bpy.data.filepath:
        raise UsageError("save the .blend file first: the cluster renders the saved file")
    return bpy.data.filepath


def save_if_changed() -> str | None:
    """The cluster renders the saved file, so unsaved changes are saved first (as render farm tools do),
    except into a file a newer Blender wrote: this one would drop what it does not know, for good."""
    if not bpy.data.is_dirty:
        return None
    saved_by, running = tuple(bpy.data.version[:2]), tuple(bpy.app.version[:2])
    if saved_by > running:
        raise UsageError(f"{bpy.path.basename(bpy.data.filepath)} was saved by Blender {dotted(saved_by)}; saving "
                         f"it from this Blender {dotted(running)} would lose what {dotted(running)} does not know. "
                         f"Submit it from Blender {dotted(saved_by)} or newer, or save a copy under a new name "
                         "(File > Save As) and submit that")
    if bpy.ops.wm.save_mainfile() != {"FINISHED"}:
        raise UsageError(f"could not save {bpy.data.filepath}; save it by hand and submit again")
    return f"saved {bpy.path.basename(bpy.data.filepath)} so the job renders what you see"


def _external(datablock: bpy.types.ID) -> str | None:
    """The file a data-block reads, when it is neither packed nor generated."""
    if getattr(datablock, "packed_file", None) is not None or getattr(datablock, "library", None) is not None:
        return None
    if getattr(datablock, "source", "FILE") not in ("FILE", "SEQUENCE", "MOVIE", "TILED"):
        return None
    path = getattr(datablock, "filepath", "")
    return path or None


def missing_files() -> list[str]:
    """`<kind> "<name>": <path>` for every external file the scene uses that is not there."""
    missing = []
    for kind, collection in (("image", bpy.data.images), ("library", bpy.data.libraries),
                             ("sound", bpy.data.sounds), ("movie clip", bpy.data.movieclips),
                             ("font", bpy.data.fonts), ("volume", bpy.data.volumes),
                             ("cache file", bpy.data.cache_files)):
        for datablock in collection:
            path = _external(datablock)
            if path and path != "<builtin>" and not _exists(datablock, path):
                missing.append(f'{kind} "{datablock.name}": {path}')
    return missing


def _exists(datablock: bpy.types.ID, path: str) -> bool:
    absolute = bpy.path.abspath(path, library=getattr(datablock, "library", None))
    if getattr(datablock, "source", "") in ("SEQUENCE", "TILED"):
        return os.path.isdir(os.path.dirname(absolute))  # numbered files: at least their folder
    return os.path.exists(absolute)


def check_scene() -> list[str]:
    """Raise on what would make the job fail; return warnings the user should read."""
    scene_file()
    missing = missing_files()
    if missing:
        more = f" and {len(missing) - LISTED} more" if len(missing) > LISTED else ""
        raise UsageError(f"{len(missing)} file(s) the scene uses are missing: " + "; ".join(missing[:LISTED]) + more)
    return []  # the scene's engine and output format are checked with the request (core.scene_settings)


def scene_settings() -> SceneSettings:
    """The open scene's render settings: what the job renders, since the file is saved before it is sent."""
    scene = bpy.context.scene
    render = scene.render
    return SceneSettings(
        scene=scene.name, engine=render.engine, frame_start=scene.frame_start, frame_end=scene.frame_end,
        frame_step=scene.frame_step, image_format=render.image_settings.file_format,
        resolution=(render.resolution_x, render.resolution_y), resolution_percentage=render.resolution_percentage,
        view_layers=tuple(layer.name for layer in scene.view_layers if layer.use),
        file_per_view=render.use_multiview and render.image_settings.views_format == "INDIVIDUAL",
        fps=round(render.fps / (render.fps_base or 1.0), 3), view_transform=scene.view_settings.view_transform,
        look=scene.view_settings.look, exposure=round(scene.view_settings.exposure, 4),
        gamma=round(scene.view_settings.gamma, 4), display_device=scene.display_settings.display_device,
        samples=scene.cycles.samples,
    )


def is_still(settings: bpy.types.PropertyGroup) -> bool:
    """Whether the job renders one frame (which Split samples can render as several tasks)."""
    try:
        return len(parse_frames(frames_of(settings))) == 1
    except BraasError:
        return False


def frames_of(settings: bpy.types.PropertyGroup) -> str:
    scene = bpy.context.scene
    if settings.frames_mode == "CUSTOM":
        return settings.custom_frames
    if not settings.animation:
        return str(scene.frame_current)
    step = f":{scene.frame_step}" if scene.frame_step > 1 else ""
    return f"{scene.frame_start}-{scene.frame_end}{step}"


_recorded: dict[str, tuple[float, str]] = {}  # preset -> (record's mtime, version): panels draw often


def _cluster_version(preset_name: str) -> str:
    """What `blender --version` said on the cluster when Install recorded its Blender ("" if never)."""
    try:
        mtime = record_path(preset_name).stat().st_mtime
    except OSError:
        return ""
    cached = _recorded.get(preset_name)
    if cached is None or cached[0] != mtime:
        installed = installed_blender(preset_name)
        cached = _recorded[preset_name] = (mtime, installed.version if installed else "")
    return cached[1]


def blender_versions(preset_name: str, pack: str) -> tuple[str, str]:
    """The panel's line: the scene's Blender beside the one the cluster will use, and a warning ("" if
    none) when the cluster's is older than the file it will open (in packed mode, the copy this Blender saves)."""
    scene = tuple(bpy.data.version[:2])
    if preset_name == "local":
        return f"Blender: scene {dotted(scene)}, rendered by this Blender {dotted(bpy.app.version[:3])}", ""
    cluster = _cluster_version(preset_name)
    found = parse_version_line(cluster)
    if found is None:
        return f"Blender: scene {dotted(scene)}, cluster not known yet (Preferences > Install records it)", ""
    opens = max(scene, tuple(bpy.app.version[:2])) if pack == "packed" else scene
    return f"Blender: scene {dotted(scene)}, cluster {dotted(found)}", cluster_warning(cluster, opens, preset_name)


def has_scripts() -> bool:
    """Text blocks set to run when the file loads: what a job started with -y would run on the cluster."""
    return any(text.use_module for text in bpy.data.texts)


def check_scripts_allowed() -> None:
    """Running the file's Python on the cluster is the user's decision for one job, and never wider than
    what Blender itself allowed this file: scripts it blocked when it opened the file stay blocked."""
    if bpy.app.autoexec_fail:
        raise UsageError(f"Blender blocked the scripts of {bpy.path.basename(bpy.data.filepath)} when it opened "
                         "it (Auto Run Python Scripts is off, or the file's folder is not trusted), so the cluster "
                         "will not run them either. If you trust the file, reload it with its scripts (File > "
                         "Revert, Trust, or the Reload Trusted button in the warning) and submit again")
