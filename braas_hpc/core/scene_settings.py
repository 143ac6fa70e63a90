"""What a .blend says about its own render, read without Blender (blender-asset-tracer reads its DNA).

The job renders the scene Blender opens the file with: the scene of the window that was active when
the file was saved (the file's global block names it), else the first scene. Its engine, output
format, frame range and view layers decide what the job is; its colour settings, resolution and
samples stay as they are unless the user overrides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from blender_asset_tracer.blendfile import BlendFile, BlendFileBlock

# The output formats a job writes, Blender's identifier -> the frame files' extension.
FORMATS = {"PNG": "png", "JPEG": "jpg", "OPEN_EXR": "exr", "OPEN_EXR_MULTILAYER": "exr", "TIFF": "tif"}
FORMAT_LABELS = {"PNG": "PNG", "JPEG": "JPEG", "OPEN_EXR": "OpenEXR", "OPEN_EXR_MULTILAYER": "OpenEXR MultiLayer",
                 "TIFF": "TIFF"}
# ImageFormatData.imtype (DNA) -> file_format; checked against files saved by Blender 4.5 and 5.0.
_IMTYPES = {0: "TARGA", 1: "IRIS", 4: "JPEG", 14: "TARGA_RAW", 15: "AVI_RAW", 16: "AVI_JPEG", 17: "PNG", 20: "BMP",
            21: "HDR", 22: "TIFF", 23: "OPEN_EXR", 24: "FFMPEG", 26: "CINEON", 27: "DPX",
            28: "OPEN_EXR_MULTILAYER", 30: "JPEG2000", 35: "WEBP"}
VIDEO_FORMATS = frozenset({"FFMPEG", "AVI_RAW", "AVI_JPEG"})
ENGINE_LABELS = {"CYCLES": "Cycles", "BLENDER_EEVEE_NEXT": "EEVEE", "BLENDER_EEVEE": "EEVEE",
                 "BLENDER_WORKBENCH": "Workbench"}
_VIEW_LAYER_RENDER = 1  # ViewLayer.flag bit: "Use for Rendering"
_MULTIVIEW = 1 << 21  # RenderData.scemode bit: Stereoscopy on
_VIEWS_INDIVIDUAL = 0  # ImageFormatData.views_format: one file per view
CYCLES_DEFAULT_SAMPLES = 4096  # scene.cycles.samples when the file never set it (Blender 3.0 and later)
_IDP_INT, _IDP_GROUP = 1, 6  # IDProperty types (DNA)


@dataclass(frozen=True)
class SceneSettings:
    """The render settings of the scene that renders, as saved in the file (or as the add-on sees them)."""

    scene: str  # its name
    engine: str  # Blender's identifier: CYCLES, BLENDER_EEVEE_NEXT, ...
    frame_start: int
    frame_end: int
    frame_step: int
    image_format: str  # Blender's file_format identifier (PNG, OPEN_EXR_MULTILAYER, FFMPEG, ...)
    resolution: tuple[int, int]  # pixels at 100%
    resolution_percentage: int
    view_layers: tuple[str, ...]  # the view layers set to render
    file_per_view: bool = False  # stereoscopy writing each view to its own file
    fps: float = 24.0  # frames per second (fps / fps_base)
    # Colour management: how scene-linear light (an EXR) becomes the colours on screen, for movies made of EXRs.
    view_transform: str = "Standard"
    look: str = "None"
    exposure: float = 0.0
    gamma: float = 1.0
    display_device: str = "sRGB"
    samples: int = 0  # Cycles' render samples; 0: not known (the add-on's scenes tell it)

    @property
    def frames(self) -> str:
        """The scene's range as a frame spec: `1-250`, `3-7:2`, `7`."""
        if self.frame_end <= self.frame_start:
            return str(self.frame_start)
        step = f":{self.frame_step}" if self.frame_step > 1 else ""
        return f"{self.frame_start}-{self.frame_end}{step}"


def read_scene_settings(path: Path) -> SceneSettings:
    """The render settings of the scene `path` renders with; UsageError when the file cannot be read."""
    from blender_asset_tracer import blendfile

    try:
        bfile = blendfile.BlendFile(path)  # not open_cached: the add-on re-reads a file it has just saved
    except Exception as exc:  # noqa: BLE001 - BAT raises many kinds for a file that is no .blend
        raise UsageError(f"cannot read {path} as a .blend file ({type(exc).__name__}: {exc}); save it again "
                         "with Blender") from exc
    try:
        scene = _active_scene(bfile)
        return _settings(scene)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or truncated file fails in any field
        raise UsageError(f"cannot read the render settings of {path} ({type(exc).__name__}: {exc}); the file "
                         "may be damaged: open it in Blender and save it again") from exc
    finally:
        bfile.close()


def _active_scene(bfile: BlendFile) -> BlendFileBlock:
    scenes = bfile.find_blocks_from_code(b"SC")
    if not scenes:
        raise UsageError(f"{bfile.filepath} has no scene to render")
    for glob in bfile.find_blocks_from_code(b"GLOB"):
        current = glob.get_pointer(b"curscene")
        if current is not None and current.code == b"SC":
            return current
    return scenes[0]


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _settings(scene: BlendFileBlock) -> SceneSettings:
    from blender_asset_tracer.blendfile import iterators

    get = scene.get
    imtype = int(get((b"r", b"im_format", b"imtype")))
    layers = []
    for layer in iterators.listbase(scene.get_pointer((b"view_layers", b"first"))):
        if int(layer.get(b"flag")) & _VIEW_LAYER_RENDER:
            layers.append(_text(layer.get(b"name")))
    return SceneSettings(
        scene=_text(scene.id_name)[2:],  # ID names start with their type code, "SC"
        engine=_text(get((b"r", b"engine"))),
        frame_start=int(get((b"r", b"sfra"))), frame_end=int(get((b"r", b"efra"))),
        frame_step=max(1, int(get((b"r", b"frame_step")))),
        image_format=_IMTYPES.get(imtype, f"file type {imtype}"),
        resolution=(int(get((b"r", b"xsch"))), int(get((b"r", b"ysch")))),
        resolution_percentage=int(get((b"r", b"size"))),
        view_layers=tuple(layers),
        file_per_view=bool(int(get((b"r", b"scemode"))) & _MULTIVIEW)
        and int(get((b"r", b"im_format", b"views_format"))) == _VIEWS_INDIVIDUAL,
        fps=round(int(get((b"r", b"frs_sec"))) / (float(get((b"r", b"frs_sec_base"))) or 1.0), 3),
        view_transform=_text(get((b"view_settings", b"view_transform"))),
        look=_text(get((b"view_settings", b"look"))), exposure=round(float(get((b"view_settings", b"exposure"))), 4),
        gamma=round(float(get((b"view_settings", b"gamma"))), 4),
        display_device=_text(get((b"display_settings", b"display_device"))),
        samples=_cycles_samples(scene),
    )


def _cycles_samples(scene: BlendFileBlock) -> int:
    """scene.cycles.samples: Cycles keeps its settings as ID properties, stored only once changed."""
    from blender_asset_tracer.blendfile import iterators

    def group(block: BlendFileBlock | None) -> dict[bytes, BlendFileBlock]:
        if block is None:
            return {}
        return {p.get(b"name"): p for p in iterators.listbase(block.get_pointer((b"data", b"group", b"first")))}

    # Blender 5.0 keeps add-on settings in `system_properties`, where a file has it (what `properties`
    # still holds then is stale); older files and versions only in `properties`.
    cycles = None
    for field in (b"system_properties", b"properties"):
        try:
            cycles = group(scene.get_pointer((b"id", field))).get(b"cycles")
        except KeyError:  # no such field in this file's DNA
            continue
        if cycles is not None:
            break
    found = group(cycles).get(b"samples") if cycles is not None and int(cycles.get(b"type")) == _IDP_GROUP else None
    if found is not None and int(found.get(b"type")) == _IDP_INT:
        return int(found.get((b"data", b"val")))
    return CYCLES_DEFAULT_SAMPLES


def check_renderable(settings: SceneSettings, source: str) -> None:
    """Refuse, before any work, a scene the cluster would not render as the user expects."""
    if settings.engine != "CYCLES":
        label = ENGINE_LABELS.get(settings.engine, settings.engine)
        raise UsageError(f"scene {settings.scene!r} of {source} renders with {label}; jobs render with Cycles "
                         "only: set Render Properties > Render Engine to Cycles and save the file")
    if not settings.view_layers:
        raise UsageError(f"scene {settings.scene!r} of {source} has no view layer set to render: tick "
                         "\"Use for Rendering\" (View Layer Properties) on at least one and save the file")
    if settings.file_per_view:
        raise UsageError(f"scene {settings.scene!r} of {source} writes each stereo view to a file of its own; jobs "
                         "write one file per frame: set Output Properties > Views > Views Format to Stereo 3D, "
                         "or turn off Stereoscopy, and save the file")


def job_format(settings: SceneSettings, requested: str, source: str) -> str:
    """The frames' format: the one the user asked for, else the scene's own (refused when no job can write it)."""
    if requested:
        wanted = requested.strip().upper()
        if wanted not in FORMATS:
            raise UsageError(f"image format {requested!r} is not one of {', '.join(FORMATS)}")
        return wanted
    if settings.image_format in FORMATS:
        return settings.image_format
    choices = ", ".join(FORMAT_LABELS.values())
    what = "a video" if settings.image_format in VIDEO_FORMATS else "an image format jobs do not write"
    raise UsageError(f"scene {settings.scene!r} of {source} writes {settings.image_format}, {what}; jobs write one "
                     f"file per frame as {choices}: choose one in Output Properties > Output > File Format (or "
                     "give a format for this job, e.g. --format PNG)")
