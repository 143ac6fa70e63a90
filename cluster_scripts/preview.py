"""Small JPEGs of finished frames, made by Blender on the cluster: the live preview a render task writes
after each frame (status/previews/), and the finish step's thumbnail (thumb.jpg).

Also the render task's sample progress: Blender 5 no longer prints Cycles' "Sample 12/64" status in
background mode, so the task prints its own line from Blender's render_stats handler (every version
calls it with that status), a few times a frame at most.

Stdlib and bpy only (bpy imported inside the functions: plain Python imports this file too).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import time
from collections.abc import Callable

PREVIEW_WIDTH = 256
PREVIEW_DIR = "previews"  # in the job's status/ directory: one frame_NNNNNN.jpg per task, the newest kept
EXR_MAGIC = b"\x76\x2f\x31\x01"
STATS_EVERY_S = 5.0
# The part of Cycles' status that counts: "Rendered 3/40 Tiles, Sample 12/64" or "Sample 12/64".
_SAMPLES = re.compile(r"(?:Rendered (\d+)/(\d+) Tiles, )?Sample (\d+)/(\d+)")


def exr_size(path: str) -> tuple[int, int]:
    """Width and height from an OpenEXR header (its dataWindow), (0, 0) when it has none."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    if head[:4] != EXR_MAGIC:
        return 0, 0
    pos = 8
    while pos < len(head) and head[pos] != 0:  # attributes: name\0 type\0 size(int32) value
        name_end = head.index(b"\0", pos)
        type_end = head.index(b"\0", name_end + 1)
        (size,) = struct.unpack_from("<i", head, type_end + 1)
        value = type_end + 5
        if head[pos:name_end] == b"dataWindow":
            x0, y0, x1, y1 = struct.unpack_from("<4i", head, value)
            return x1 - x0 + 1, y1 - y0 + 1
        pos = value + size
    return 0, 0


def write_jpeg(source: str, target: str, width: int, view: object) -> None:
    """A JPEG at most `width` pixels wide of a frame file, written under a temp name beside `target` and
    renamed, so a reader sees the old file or the new one. An EXR holds scene-linear light: it is shown
    display-referred through `view`'s colour management (the render scene's view transform, look and
    exposure). Other formats hold finished colours already and are only converted back to sRGB (a second
    view transform would wash them out). `view`'s scene is left as it was: a throwaway scene writes."""
    import bpy  # only inside Blender

    image = bpy.data.images.load(source, check_existing=False)
    scene = bpy.data.scenes.new(".braas-preview")
    try:
        # A multilayer EXR reports no size until a layer is chosen; its header has it.
        w, h = tuple(image.size) if image.size[0] else exr_size(source)
        if w > width:
            image.scale(width, max(1, round(h * width / w)))
        if source.endswith(".exr"):
            scene.display_settings.display_device = view.display_settings.display_device  # type: ignore[attr-defined]
            for key in ("view_transform", "look", "exposure", "gamma"):
                setattr(scene.view_settings, key, getattr(view.view_settings, key))  # type: ignore[attr-defined]
        else:
            scene.view_settings.view_transform = "Standard"
            scene.view_settings.look = "None"
        settings = scene.render.image_settings
        settings.file_format = "JPEG"
        settings.quality = 80
        temp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.part.jpg")
        if os.path.lexists(temp):  # Blender opens its fixed name as it finds it: never through a leftover link
            os.unlink(temp)
        image.save_render(temp, scene=scene)
        os.replace(temp, target)
    finally:
        bpy.data.scenes.remove(scene)
        bpy.data.images.remove(image)


def write_preview(status_dir: str, frame_file: str, frame: int, view: object, before: str) -> str:
    """The task's preview of the frame it just rendered, in status/previews/ as frame_NNNNNN.jpg; the
    task's earlier one (`before`) goes once the new one is in place. Returns the new path."""
    folder = os.path.join(status_dir, PREVIEW_DIR)
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, f"frame_{frame:06d}.jpg")
    write_jpeg(frame_file, target, PREVIEW_WIDTH, view)
    if before and before != target:
        with contextlib.suppress(OSError):
            os.unlink(before)
    return target


def samples_line(status: str) -> str:
    """Cycles' sample count in a render status, as the task prints it ("" when it has none)."""
    found = _SAMPLES.search(status)
    return found.group(0) if found else ""


def stats_printer(task: int, frame: Callable[[], int], every_s: float = STATS_EVERY_S,
                  clock: Callable[[], float] = time.monotonic) -> Callable[[str], None]:
    """A render_stats handler printing `BRAAS-SAMPLES task=K frame=F <samples>` at most every `every_s`
    seconds, and always a frame's first line and the last sample of a tile or frame (so a log's last word
    on a frame is its end)."""
    last = [-every_s]
    shown_frame = [None]  # a frame's first line is always news: a fast frame may give no other

    def printed(status: str) -> None:
        samples = samples_line(status)
        if not samples:
            return
        found = _SAMPLES.search(samples)
        assert found is not None
        done = found.group(3) == found.group(4)  # a tile's (or the frame's) last sample
        now, current = clock(), frame()
        if now - last[0] < every_s and not done and current == shown_frame[0]:
            return
        last[0], shown_frame[0] = now, current
        print(f"BRAAS-SAMPLES task={task} frame={current} {samples}", flush=True)

    return printed
