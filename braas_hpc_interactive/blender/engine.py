"""The "BRaaS-HPC Remote Cycles" render engine: a 3D viewport that shows frames rendered on a compute node.

The engine itself holds no connection. "View in Viewport" opens a link in `links` (its own thread);
view_draw only reads the view on the main thread, hands it to the link when it changed, and draws the
newest frame the link delivered. The runtime's timer (`addon.py`) tags the 3D views when a frame arrives,
so nothing off the main thread touches bpy, and an engine instance Blender throws away leaves nothing behind (the
texture it cached goes with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np

from ..core.client import Frame
from ..core.protocol import BYTES_PER_PIXEL, CameraInfo, ViewRequest, view_request_from_viewport
from . import links
from .addon import panel

ENGINE_ID = "BRAAS_HPC_REMOTE"
F12_MESSAGE = ("BRaaS-HPC Remote Cycles only shows a remote viewport: use Cycles to render here, or submit a "
               "job to the cluster (Render Properties > BRaaS-HPC)")
NO_LINK = "No remote view: BRaaS-HPC sidebar > Interactive > View in Viewport"


def camera_info(camera_object: Any, rv3d: Any) -> CameraInfo:
    data = getattr(camera_object, "data", None)
    if camera_object is None or data is None or not hasattr(data, "sensor_fit"):
        raise ValueError("camera view needs the scene's camera to be a camera object")
    return CameraInfo(type=data.type, lens=data.lens, ortho_scale=data.ortho_scale, clip_start=data.clip_start,
                      clip_end=data.clip_end, sensor_width=data.sensor_width, sensor_height=data.sensor_height,
                      sensor_fit=data.sensor_fit, shift_x=data.shift_x, shift_y=data.shift_y,
                      view_camera_zoom=rv3d.view_camera_zoom, view_camera_offset=tuple(rv3d.view_camera_offset))


def viewport_request(region: Any, rv3d: Any, space: Any, scene: Any) -> ViewRequest:
    """The request for one 3D view, read on the main thread (plain attribute reads, so it is testable
    with stand-ins: there is no 3D view in background mode)."""
    inverse = rv3d.view_matrix.inverted()
    camera = None
    if rv3d.view_perspective == "CAMERA":
        local = getattr(space, "use_local_camera", False) and getattr(space, "camera", None)
        camera = camera_info(local or scene.camera, rv3d)
    return view_request_from_viewport([tuple(inverse[row]) for row in range(3)], rv3d.view_perspective,
                                      region.width, region.height, space.lens, space.clip_start, space.clip_end,
                                      rv3d.view_distance, camera=camera, frame=scene.frame_current)


def script_of(scene: Any) -> str | None:
    """The text the server gets as its script (BlenderPhi's XML material), or None for none."""
    text = scene.braas_hpc_interactive.script_text
    return text.as_string() if text is not None else None


def frame_floats(frame: Frame) -> np.ndarray | None:
    """The frame's half-float RGBA as contiguous float32, as gpu.types.Buffer('FLOAT') wants it; None for a
    frame whose size does not match its pixels."""
    count = frame.width * frame.height
    if count <= 0 or len(frame.pixels) != count * BYTES_PER_PIXEL:
        return None
    return np.frombuffer(frame.pixels, dtype=np.float16).astype(np.float32)


def stats_text(link: Any, frame: Frame | None) -> str:
    if link is None:
        return NO_LINK
    if frame is None:
        return links.describe_link(link) if link.error or not link.connected else "Waiting for the first frame..."
    remote = frame.state.fps
    remote_text = f"{remote:.1f}" if np.isfinite(remote) else "-"
    return f"Samples {frame.state.samples} | FPS {link.frames_per_second:.1f} (remote {remote_text})"


@dataclass
class _Shown:
    serial: int
    texture: Any  # gpu.types.GPUTexture


class BRAAS_HPC_RemoteEngine(bpy.types.RenderEngine):
    bl_idname = ENGINE_ID
    bl_label = "BRaaS-HPC Remote Cycles"
    bl_use_preview = False

    _shown = None  # per instance once set (_Shown): the texture of the last frame drawn

    def render(self, depsgraph: bpy.types.Depsgraph) -> None:
        self.report({"ERROR"}, F12_MESSAGE)  # the status bar; F12 from a script raises it
        self.error_set(F12_MESSAGE)  # and the render window's own message

    def view_update(self, context: bpy.types.Context, depsgraph: bpy.types.Depsgraph) -> None:
        pass  # the scene lives on the node; only the view is sent, from view_draw

    def view_draw(self, context: bpy.types.Context, depsgraph: bpy.types.Depsgraph) -> None:
        scene = depsgraph.scene
        link = links.current()
        if link is None:
            self.update_stats("", NO_LINK)
            return
        region = context.region
        try:
            links.set_view(viewport_request(region, context.region_data, context.space_data, scene),
                           owner=region.as_pointer())
        except ValueError as error:  # a panoramic camera, a camera view without a camera
            self.update_stats("", str(error))
            return
        links.set_script(script_of(scene))
        links.drawn()
        serial, frame = links.latest()
        texture = self._texture(serial, frame)
        if texture is not None:
            self._draw(scene, texture, region.width, region.height)
        self.update_stats("", stats_text(link, frame))

    def _texture(self, serial: int, frame: Frame | None) -> Any:
        if self._shown is not None and self._shown.serial == serial:
            return self._shown.texture
        floats = frame_floats(frame) if frame is not None else None
        if floats is None:
            self._shown = None
            return None
        import gpu  # not in background mode, where no viewport is drawn

        buffer = gpu.types.Buffer("FLOAT", floats.size, floats)  # wraps the array: no per-pixel copy
        texture = gpu.types.GPUTexture((frame.width, frame.height), format="RGBA16F", data=buffer)
        self._shown = _Shown(serial, texture)
        return texture

    def _draw(self, scene: bpy.types.Scene, texture: Any, width: int, height: int) -> None:
        import gpu
        from gpu_extras.presets import draw_texture_2d

        # Scene-linear, premultiplied, rows bottom-up like the texture: Blender's own view transform
        # applies, as for Cycles' viewport. A frame of the previous size stretches until the next arrives.
        gpu.state.blend_set("ALPHA_PREMULT")
        self.bind_display_space_shader(scene)
        draw_texture_2d(texture, (0, 0), width, height)
        self.unbind_display_space_shader()
        gpu.state.blend_set("NONE")


CLASSES = (BRAAS_HPC_RemoteEngine,)


# ---- switching a scene's viewport to the remote view and back


def start_viewing(scene: bpy.types.Scene, host: str, port: int, token: str | None, key: str,
                  max_samples: int, owner: int = 0) -> None:
    """Open the link and make the scene's engine ours (remembering the one it had)."""
    links.open_view(host, port, token, key=key, max_samples=max_samples or None, owner=owner)
    settings = scene.braas_hpc_interactive
    if scene.render.engine != ENGINE_ID:
        settings.previous_engine = scene.render.engine
        scene.render.engine = ENGINE_ID
    for space in _view3d_spaces(scene, only_pointer=owner):
        if space.shading.type != "RENDERED":
            panel.shading[space.as_pointer()] = space.shading.type
            space.shading.type = "RENDERED"


def stop_viewing(wait: bool = False) -> bool:
    """Close the link (without waiting for the server, unless asked) and give every scene its engine back."""
    was_viewing = links.close_view(wait=wait)
    restore_engines()
    return was_viewing


def restore_engines() -> None:
    for scene in bpy.data.scenes:
        if scene.render.engine == ENGINE_ID:
            previous = scene.braas_hpc_interactive.previous_engine
            scene.render.engine = previous if previous and previous != ENGINE_ID else "CYCLES"
    for space in _view3d_spaces(None):
        shading = panel.shading.pop(space.as_pointer(), None)
        if shading is not None and space.shading.type == "RENDERED":
            space.shading.type = shading
    panel.shading.clear()


def _view3d_spaces(scene: bpy.types.Scene | None, only_pointer: int = 0) -> list[Any]:
    """The 3D views showing `scene` (any scene if None); with only_pointer, the one whose main region
    is that one."""
    window_manager = bpy.context.window_manager
    spaces = []
    for window in window_manager.windows if window_manager else ():
        if scene is not None and window.scene != scene:
            continue
        for area in window.screen.areas:
            if area.type != "VIEW_3D":
                continue
            if only_pointer and not any(r.as_pointer() == only_pointer for r in area.regions):
                continue
            spaces.append(area.spaces.active)
    return spaces
