"""Shared by the tests that run Blender: a tiny Cycles scene built with the bpy wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 300  # generous: the machine is small and shared

# Emissive plane in front of the camera, so every frame renders something, fast.
BUILD_SCENE = """
import sys
import bpy

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
bpy.ops.mesh.primitive_plane_add(size=4)
material = bpy.data.materials.new("Glow")
material.use_nodes = True
nodes = material.node_tree.nodes
nodes.clear()
emission = nodes.new("ShaderNodeEmission")
output = nodes.new("ShaderNodeOutputMaterial")
material.node_tree.links.new(emission.outputs[0], output.inputs[0])
bpy.context.object.data.materials.append(material)
camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
camera.location = (0, 0, 5)
scene.collection.objects.link(camera)
scene.camera = camera
light = bpy.data.objects.new("Light", bpy.data.lights.new("Light", "SUN"))
scene.collection.objects.link(light)
scene.render.engine = "CYCLES"
scene.cycles.samples = 4
scene.cycles.use_denoising = False
scene.render.resolution_x = 64
scene.render.resolution_y = 48
scene.render.resolution_percentage = 100
scene.frame_start = 1
scene.frame_end = 5
bpy.data.scenes.new("Second")
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])
"""


@pytest.fixture(scope="module")
def built_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    blend = tmp_path_factory.mktemp("scene") / "scene.blend"
    subprocess.run(
        [sys.executable, "-c", BUILD_SCENE, str(blend)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return blend


@pytest.fixture
def scene(built_scene: Path, tmp_path: Path) -> Path:
    """A private copy, so `//` outputs of each test land in its own directory."""
    return Path(shutil.copy(built_scene, tmp_path / "scene.blend"))
