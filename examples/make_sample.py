"""Builds the sample scene: a checker-textured floor (an external PNG), an animated cube, a camera.

Run with the bpy module or inside Blender:
    python3 examples/make_sample.py OUT_DIR
    blender -b -P examples/make_sample.py -- OUT_DIR
Writes OUT_DIR/sample.blend and OUT_DIR/textures/checker.png (referenced by a relative path, so the
scene only renders right when the texture travels with it: tests check that by colour).
"""

from __future__ import annotations

import math
import os
import sys

import bpy

RED = (0.9, 0.05, 0.05, 1.0)
GREEN = (0.05, 0.8, 0.1, 1.0)
TEXTURE_SIZE = 64
SQUARES = 8


def checker_pixels() -> list[float]:
    pixels: list[float] = []
    cell = TEXTURE_SIZE // SQUARES
    for y in range(TEXTURE_SIZE):
        for x in range(TEXTURE_SIZE):
            pixels.extend(RED if (x // cell + y // cell) % 2 == 0 else GREEN)
    return pixels


def write_texture(path: str) -> None:
    image = bpy.data.images.new("checker_source", TEXTURE_SIZE, TEXTURE_SIZE)
    image.pixels[:] = checker_pixels()
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def textured_floor(texture_path: str) -> None:
    bpy.ops.mesh.primitive_plane_add(size=8)
    floor = bpy.context.object
    material = bpy.data.materials.new("checker_floor")
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = bpy.data.images.load(texture_path)
    texture.interpolation = "Closest"
    emission = nodes.new("ShaderNodeEmission")  # emission: the render shows the texture's own colours
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(texture.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    floor.data.materials.append(material)


def animated_cube() -> None:
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(0, 0, 0.75))
    cube = bpy.context.object
    material = bpy.data.materials.new("cube")
    material.use_nodes = True
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.8, 0.8, 0.9, 1)
    cube.data.materials.append(material)
    for frame, angle in ((1, 0.0), (24, math.pi)):
        cube.rotation_euler = (0, 0, angle)
        cube.keyframe_insert("rotation_euler", frame=frame)


def camera_and_light(scene: bpy.types.Scene) -> None:
    bpy.ops.object.camera_add(location=(0, -7, 5), rotation=(math.radians(50), 0, 0))
    scene.camera = bpy.context.object
    bpy.ops.object.light_add(type="SUN", location=(2, -2, 6))
    bpy.context.object.data.energy = 3.0


def render_settings(scene: bpy.types.Scene) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 8
    scene.cycles.use_denoising = False
    scene.render.resolution_x = 192
    scene.render.resolution_y = 108
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 24
    scene.render.image_settings.file_format = "PNG"


def main(out_dir: str) -> None:
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.join(out_dir, "textures"), exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0  # no sample.blend1 backups
    scene = bpy.context.scene
    texture_path = os.path.join(out_dir, "textures", "checker.png")
    write_texture(texture_path)
    textured_floor(texture_path)
    animated_cube()
    camera_and_light(scene)
    render_settings(scene)
    blend = os.path.join(out_dir, "sample.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.ops.file.make_paths_relative()  # the texture is found next to the .blend wherever it goes
    bpy.ops.wm.save_as_mainfile(filepath=blend, compress=True)
    print(f"wrote {blend}")


if __name__ == "__main__":
    args = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    main(args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample"))
