"""Builds a scene that needs one file of each kind a render can depend on, for the upload tests.

Run with the bpy module:  python3 tests/deps_scene.py OUT_DIR [--packable | --only KIND,KIND]
Writes OUT_DIR/deps.blend and its files. An orthographic camera looks down on a grid of cells; each cell
shows one dependency in a flat colour that only that file brings (CELLS below: kind -> (column, row),
COLOURS: the colour the cell must have at FRAME). Without its file a cell stays black or shows another
colour, so a render checks by pixels that every file reached Blender and was used.
--packable builds only the kinds Blender 4.5 packs into one .blend (library, UDIM tiles, font, image, bakes);
--only the kinds named.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deps_layout import CELLS, COLOURS, COLUMNS, FRAME, PACKABLE, RESOLUTION, ROWS, WRONG  # noqa: E402

OFF_CAMERA = (50.0, 50.0, 0.0)  # where geometry sits when its cache does not move it into its cell


def centre(kind: str) -> tuple[float, float]:
    """The cell's centre in world units: the camera sees x in [-2, 2], y in [-1.5, 1.5]."""
    column, row = CELLS[kind]
    return (column - COLUMNS / 2 + 0.5, ROWS / 2 - 0.5 - row)


def linear(rgb: tuple[int, int, int]) -> tuple[float, float, float, float]:
    def one(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    return (one(rgb[0]), one(rgb[1]), one(rgb[2]), 1.0)


def emission(name: str, rgb: tuple[int, int, int] | None = None, image: bpy.types.Image | None = None
             ) -> bpy.types.Material:
    """A material showing a flat colour, or an image's colour."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    shader = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(shader.outputs["Emission"], output.inputs["Surface"])
    if image is not None:
        texture = nodes.new("ShaderNodeTexImage")
        texture.image = image
        texture.interpolation = "Closest"
        links.new(texture.outputs["Color"], shader.inputs["Color"])
    else:
        shader.inputs["Color"].default_value = linear(rgb or WRONG)
    return material


def write_png(path: str, rgb: tuple[int, int, int], size: int = 4) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = bpy.data.images.new("writer", size, size)
    image.pixels[:] = [*(c / 255 for c in rgb), 1.0] * (size * size)
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def cell_plane(kind: str, material: bpy.types.Material | None, at: tuple[float, float, float] | None = None,
               name: str = "") -> bpy.types.Object:
    x, y = centre(kind)
    bpy.ops.mesh.primitive_plane_add(size=0.8, location=at or (x, y, 0))
    plane = bpy.context.object
    plane.name = name or kind
    if material:
        plane.data.materials.append(material)
    return plane


# ---- the kinds Blender packs ----

def image(out: str) -> None:
    path = os.path.join(out, "textures", "image.png")
    write_png(path, COLOURS["image"])
    cell_plane("image", emission("image", image=bpy.data.images.load(path)))


def library(out: str) -> None:
    """A linked collection from lib/library.blend, whose plane shows a texture beside the library."""
    lib_dir = os.path.join(out, "lib")
    write_png(os.path.join(lib_dir, "textures", "lib.png"), COLOURS["library"])
    library_path = os.path.join(lib_dir, "library.blend")
    script = (
        "import bpy, sys\n"
        "bpy.ops.wm.read_factory_settings(use_empty=True)\n"
        "bpy.context.preferences.filepaths.save_version = 0\n"
        f"img = bpy.data.images.load({os.path.join(lib_dir, 'textures', 'lib.png')!r})\n"
        "m = bpy.data.materials.new('lib'); m.use_nodes = True; n = m.node_tree.nodes; n.clear()\n"
        "t = n.new('ShaderNodeTexImage'); t.image = img; e = n.new('ShaderNodeEmission')\n"
        "o = n.new('ShaderNodeOutputMaterial'); l = m.node_tree.links\n"
        "l.new(t.outputs['Color'], e.inputs['Color']); l.new(e.outputs['Emission'], o.inputs['Surface'])\n"
        f"bpy.ops.mesh.primitive_plane_add(size=0.8, location=({centre('library')[0]}, {centre('library')[1]}, 0))\n"
        "p = bpy.context.object; p.data.materials.append(m)\n"
        "c = bpy.data.collections.new('LibTile'); c.objects.link(p)\n"
        "bpy.context.scene.collection.objects.unlink(p); bpy.context.scene.collection.children.link(c)\n"
        f"bpy.ops.wm.save_as_mainfile(filepath={library_path!r}, relative_remap=True)\n"
        "bpy.ops.file.make_paths_relative(); bpy.ops.wm.save_mainfile()\n"
    )
    _run_in_fresh_blender(script)
    with bpy.data.libraries.load(library_path, link=True, relative=True) as (_src, dst):
        dst.collections = ["LibTile"]
    instance = bpy.data.objects.new("library", None)
    instance.instance_type = "COLLECTION"
    instance.instance_collection = dst.collections[0]
    bpy.context.scene.collection.objects.link(instance)


def _run_in_fresh_blender(script: str) -> None:
    """Another .blend is made by a second Python process: this one keeps building the scene."""
    import subprocess
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)


def udim(out: str) -> None:
    """Tiles 1001 and 1002; the plane's UVs lie in tile 1002."""
    directory = os.path.join(out, "udim")
    write_png(os.path.join(directory, "tile.1001.png"), WRONG)
    write_png(os.path.join(directory, "tile.1002.png"), COLOURS["udim"])
    img = bpy.data.images.load(os.path.join(directory, "tile.1001.png"))
    img.source = "TILED"
    img.filepath = os.path.join(directory, "tile.<UDIM>.png")
    img.tiles.new(1002)
    img.reload()
    plane = cell_plane("udim", emission("udim", image=img))
    for loop in plane.data.uv_layers.active.data:
        loop.uv = (loop.uv[0] * 0.5 + 1.25, loop.uv[1] * 0.5 + 0.25)


def font(out: str) -> None:
    """A text object in a font file beside the scene: a full-block glyph that fills the cell."""
    source = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    path = os.path.join(out, "fonts", "block.ttf")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(source, path)
    x, y = centre("font")
    curve = bpy.data.curves.new("font", "FONT")
    curve.body = "\u2588"
    curve.font = bpy.data.fonts.load(path)
    curve.size = 0.9
    curve.align_x, curve.align_y = "CENTER", "CENTER"
    obj = bpy.data.objects.new("font", curve)
    obj.location = (x, y, 0)
    obj.data.materials.append(emission("font", COLOURS["font"]))
    bpy.context.scene.collection.objects.link(obj)


# ---- the kinds Blender cannot pack: sequences, movies, caches, bakes, external multires ----

def sequence(out: str) -> None:
    directory = os.path.join(out, "seq")
    for frame in (1, 2, 3):
        write_png(os.path.join(directory, f"tile_{frame:04d}.png"), COLOURS["sequence"] if frame == FRAME else WRONG)
    img = bpy.data.images.load(os.path.join(directory, "tile_0001.png"))
    img.source = "SEQUENCE"
    material = emission("sequence", image=img)
    texture = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE")
    texture.image_user.frame_duration = 3
    texture.image_user.frame_start = 1
    texture.image_user.use_auto_refresh = True
    cell_plane("sequence", material)


def movie(out: str) -> None:
    """A 3-frame lossless video (made here from colour strips) as an image texture: frame 2 has the colour.
    The same file is also a Movie Clip data-block (kept with a fake user; Cycles does not render clips)."""
    path = os.path.join(out, "movie", "clip.mkv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    maker = bpy.data.scenes.new("movie_maker")
    maker.render.resolution_x = maker.render.resolution_y = 16
    maker.render.resolution_percentage = 100
    maker.frame_start, maker.frame_end = 1, 3
    maker.view_settings.view_transform = "Standard"
    editor = maker.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences  # renamed in 5.0
    for frame in (1, 2, 3):
        try:
            strip = strips.new_effect(name=f"c{frame}", type="COLOR", channel=1, frame_start=frame, length=1)
        except TypeError:  # before 5.0: frame_end
            strip = strips.new_effect(name=f"c{frame}", type="COLOR", channel=1, frame_start=frame,
                                      frame_end=frame + 1)
        strip.color = [c / 255 for c in (COLOURS["movie"] if frame == FRAME else WRONG)]
    settings = maker.render.image_settings
    if hasattr(settings, "media_type"):  # 5.0 chooses video output first
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    settings.color_mode = "RGB"
    maker.render.ffmpeg.format, maker.render.ffmpeg.codec = "MKV", "FFV1"
    maker.render.filepath = path
    maker.render.use_file_extension = False
    bpy.ops.render.render(animation=True, scene=maker.name)
    bpy.data.scenes.remove(maker)
    img = bpy.data.images.load(path)
    img.source = "MOVIE"
    material = emission("movie", image=img)
    texture = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE")
    texture.image_user.frame_duration = 3
    texture.image_user.frame_start = 1
    texture.image_user.use_auto_refresh = True
    cell_plane("movie", material)
    bpy.data.movieclips.load(path).use_fake_user = True


def multires(out: str) -> None:
    """A Multires modifier whose displacement (moving the plane from off camera into its cell) is saved
    in an external file, multires/plane.btx."""
    x, y = centre("multires")
    plane = cell_plane("multires", emission("multires", COLOURS["multires"]), at=(x + 10, y, 0))
    modifier = plane.modifiers.new("multires", "MULTIRES")
    with bpy.context.temp_override(object=plane, active_object=plane):
        bpy.ops.object.multires_subdivide(modifier=modifier.name, mode="SIMPLE")
    target = plane.copy()
    target.data = plane.data.copy()
    bpy.context.scene.collection.objects.link(target)
    with bpy.context.temp_override(object=target, active_object=target):
        bpy.ops.object.modifier_apply(modifier=target.modifiers[0].name)
    for vertex in target.data.vertices:
        vertex.co.x -= 10
    with bpy.context.temp_override(object=plane, active_object=plane, selected_editable_objects=[plane, target]):
        bpy.ops.object.multires_reshape(modifier=modifier.name)
    bpy.data.objects.remove(target)
    os.makedirs(os.path.join(out, "multires"), exist_ok=True)
    with bpy.context.temp_override(object=plane, active_object=plane):
        bpy.ops.object.multires_external_save(filepath=os.path.join(out, "multires", "plane.btx"),
                                              relative_path=True, modifier=modifier.name)


def volume(out: str) -> None:
    """An OpenVDB file (a cube of density, written with the openvdb module Blender bundles) as a Volume
    object with a bright emission: a white square."""
    import glob
    sys.path.extend(glob.glob(os.path.join(bpy.utils.resource_path("LOCAL"), "python", "lib", "python3*",
                                           "site-packages")))
    import openvdb  # noqa: PLC0415 - only Blender's own Python has it, on the path added above

    path = os.path.join(out, "vdb", "cube.vdb")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid = openvdb.FloatGrid()
    grid.name = "density"
    voxels = grid.getAccessor()
    for i in range(8):
        for j in range(8):
            for k in range(8):
                voxels.setValueOn((i, j, k), 1.0)
    grid.transform = openvdb.createLinearTransform(voxelSize=0.1)
    openvdb.write(path, grids=[grid])
    data = bpy.data.volumes.new("volume")
    data.filepath = path
    material = bpy.data.materials.new("volume")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    nodes.clear()
    glow = nodes.new("ShaderNodeVolumePrincipled")  # density from the file's grid, glowing white
    glow.inputs["Emission Strength"].default_value = 50.0
    glow.inputs["Emission Color"].default_value = (1, 1, 1, 1)
    output = nodes.new("ShaderNodeOutputMaterial")
    material.node_tree.links.new(glow.outputs[0], output.inputs["Volume"])
    data.materials.append(material)
    obj = bpy.data.objects.new("volume", data)
    x, y = centre("volume")
    # Below the cells' planes: Cycles (4.5) also renders this volume in arms about a unit long beside it,
    # which the neighbouring planes hide.
    obj.location = (x - 0.4, y - 0.4, -1.5)
    bpy.context.scene.collection.objects.link(obj)


def alembic(out: str) -> None:
    """A Mesh Sequence Cache reads the cell's plane from abc/plane.abc; the object's own mesh is off camera."""
    path = os.path.join(out, "abc", "plane.abc")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    x, y = centre("alembic")
    plane = cell_plane("alembic", None, at=(0, 0, 0), name="alembic_source")
    for vertex in plane.data.vertices:
        vertex.co = (vertex.co.x + x, vertex.co.y + y, 0)
    _only_selected(plane)
    bpy.ops.wm.alembic_export(filepath=path, selected=True, start=1, end=1)
    bpy.data.objects.remove(plane)
    bpy.ops.wm.alembic_import(filepath=path, as_background_job=False, always_add_cache_reader=True)
    obj = bpy.context.selected_objects[0]
    obj.name = "alembic"
    for vertex in obj.data.vertices:
        vertex.co = [a + b for a, b in zip(vertex.co, OFF_CAMERA, strict=True)]
    obj.data.materials.append(emission("alembic", COLOURS["alembic"]))
    assert any(m.type == "MESH_SEQUENCE_CACHE" for m in obj.modifiers)


def _only_selected(obj: bpy.types.Object) -> None:
    for other in bpy.context.scene.objects:
        other.select_set(other is obj)
    bpy.context.view_layer.objects.active = obj


def mesh_cache(out: str) -> None:
    """A Mesh Cache modifier moves an off-camera plane into its cell from cache/plane.pc2."""
    plane = cell_plane("mesh_cache", emission("mesh_cache", COLOURS["mesh_cache"]), at=OFF_CAMERA)
    x, y = centre("mesh_cache")
    points = [(v.co.x + x, v.co.y + y, 0.0) for v in plane.data.vertices]
    path = os.path.join(out, "cache", "plane.pc2")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as stream:  # PC2: header, then every point of every sample as 3 float32
        stream.write(struct.pack("<12siiffi", b"POINTCACHE2\0", 1, len(points), 1.0, 1.0, 3))
        for _sample in range(3):
            for point in points:
                stream.write(struct.pack("<3f", *point))
    modifier = plane.modifiers.new("cache", "MESH_CACHE")
    modifier.cache_format = "PC2"
    modifier.filepath = path
    plane.location = (0, 0, 0)
    for vertex in plane.data.vertices:
        vertex.co = [a + b for a, b in zip(vertex.co, OFF_CAMERA, strict=True)]


def point_cache(out: str) -> None:
    """Particles baked to a disk cache (blendcache_deps/) while their emitter was in the cell; the emitter
    was moved off camera afterwards, so only the cache puts them there."""
    x, y = centre("point_cache")
    dot = cell_plane("point_cache", emission("point_cache", COLOURS["point_cache"]), at=OFF_CAMERA, name="dot")
    emitter = cell_plane("point_cache", None)
    emitter.modifiers.new("particles", "PARTICLE_SYSTEM")
    system = emitter.particle_systems[0]
    particles = system.settings
    particles.count = 300
    particles.frame_start, particles.frame_end = 1, 1
    particles.lifetime = 50
    particles.normal_factor = 0.0
    particles.effector_weights.gravity = 0.0
    particles.render_type = "OBJECT"
    particles.instance_object = dot
    particles.particle_size = 0.12
    particles.use_rotations = False
    emitter.show_instancer_for_render = False
    system.point_cache.use_disk_cache = True
    system.point_cache.frame_start, system.point_cache.frame_end = 1, 3
    bpy.ops.wm.save_mainfile()
    with bpy.context.temp_override(scene=bpy.context.scene, active_object=emitter, object=emitter,
                                   point_cache=system.point_cache):
        bpy.ops.ptcache.bake_all(bake=True)
    emitter.location = OFF_CAMERA
    assert system.point_cache.is_baked, "the particle cache did not bake"
    del x, y


def bake(out: str) -> None:
    """A geometry-nodes Bake node baked to disk while its input was in the cell; the input was moved off
    camera afterwards, so only the bake's files put the square there."""
    x, y = centre("bake")
    obj = cell_plane("bake", None, at=(0, 0, 0))
    tree = bpy.data.node_groups.new("bake", "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = tree.nodes, tree.links
    grid = nodes.new("GeometryNodeMeshGrid")
    grid.inputs["Size X"].default_value = grid.inputs["Size Y"].default_value = 0.8
    move = nodes.new("GeometryNodeTransform")
    move.inputs["Translation"].default_value = (x, y, 0)
    baked = nodes.new("GeometryNodeBake")
    paint = nodes.new("GeometryNodeSetMaterial")
    paint.inputs["Material"].default_value = emission("bake", COLOURS["bake"])
    output = nodes.new("NodeGroupOutput")
    links.new(grid.outputs["Mesh"], move.inputs["Geometry"])
    links.new(move.outputs["Geometry"], baked.inputs[0])
    links.new(baked.outputs[0], paint.inputs["Geometry"])
    links.new(paint.outputs["Geometry"], output.inputs[0])
    bake_to_disk(obj, "bake", tree)
    move.inputs["Translation"].default_value = OFF_CAMERA


def bake_to_disk(obj: bpy.types.Object, name: str, tree: bpy.types.NodeTree) -> None:
    """Give `obj` the node group as a modifier and bake it to disk, beside the saved .blend."""
    modifier = obj.modifiers.new(name, "NODES")
    modifier.node_group = tree
    if hasattr(modifier, "bake_target"):
        modifier.bake_target = "DISK"
    bpy.ops.wm.save_mainfile()
    _only_selected(obj)
    bpy.ops.object.geometry_node_bake_single(session_uid=obj.session_uid, modifier_name=modifier.name,
                                             bake_id=modifier.bakes[0].bake_id)


def simulation(out: str) -> None:
    """A geometry-nodes simulation baked to disk: each step moved the square half-way from off camera into
    its cell (two steps by frame 2); the step was set to nothing after baking, so only the bake puts it
    there."""
    x, y = centre("simulation")
    obj = cell_plane("simulation", None, at=(0, 0, 0))
    tree = bpy.data.node_groups.new("simulation", "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = tree.nodes, tree.links
    grid = nodes.new("GeometryNodeMeshGrid")
    grid.inputs["Size X"].default_value = grid.inputs["Size Y"].default_value = 0.8
    start = nodes.new("GeometryNodeTransform")
    start.inputs["Translation"].default_value = (x + 10, y, 0)
    zone_in, zone_out = nodes.new("GeometryNodeSimulationInput"), nodes.new("GeometryNodeSimulationOutput")
    zone_in.pair_with_output(zone_out)
    step = nodes.new("GeometryNodeTransform")
    step.inputs["Translation"].default_value = (-5, 0, 0)
    paint = nodes.new("GeometryNodeSetMaterial")
    paint.inputs["Material"].default_value = emission("simulation", COLOURS["simulation"])
    output = nodes.new("NodeGroupOutput")
    links.new(grid.outputs["Mesh"], start.inputs["Geometry"])
    links.new(start.outputs["Geometry"], zone_in.inputs["Geometry"])
    links.new(zone_in.outputs["Geometry"], step.inputs["Geometry"])
    links.new(step.outputs["Geometry"], zone_out.inputs["Geometry"])
    links.new(zone_out.outputs["Geometry"], paint.inputs["Geometry"])
    links.new(paint.outputs["Geometry"], output.inputs[0])
    bake_to_disk(obj, "simulation", tree)
    step.inputs["Translation"].default_value = (0, 0, 0)


def main(out: str, wanted: tuple[str, ...]) -> None:
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0
    scene = bpy.context.scene
    settings(scene)
    kinds = tuple(k for k in wanted if k in BUILDERS)
    blend = os.path.join(out, "deps.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)  # caches and bakes are written relative to the saved file
    for kind in kinds:
        BUILDERS[kind](out)
    bpy.ops.file.make_paths_relative()
    bpy.ops.wm.save_as_mainfile(filepath=blend, compress=True)
    with open(os.path.join(out, "deps.json"), "w", encoding="utf-8") as stream:
        json.dump({"kinds": list(kinds), "frame": FRAME}, stream)
    print(f"wrote {blend}")


def settings(scene: bpy.types.Scene) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.cycles.pixel_filter_type = "BOX"
    scene.render.resolution_x, scene.render.resolution_y = RESOLUTION
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.frame_start, scene.frame_end = 1, 3
    scene.frame_set(FRAME)
    world = bpy.data.worlds.new("black")
    world.color = (0, 0, 0)
    scene.world = world
    camera = bpy.data.cameras.new("camera")
    camera.type = "ORTHO"
    camera.ortho_scale = COLUMNS
    obj = bpy.data.objects.new("camera", camera)
    obj.location = (0, 0, 10)
    scene.collection.objects.link(obj)
    scene.camera = obj


BUILDERS = {"image": image, "library": library, "udim": udim, "font": font, "sequence": sequence,
            "alembic": alembic, "movie": movie, "multires": multires, "volume": volume,
            "mesh_cache": mesh_cache, "point_cache": point_cache, "bake": bake,
            "simulation": simulation}


if __name__ == "__main__":
    args = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    chosen = args[args.index("--only") + 1].split(",") if "--only" in args else None
    main(args[0], tuple(chosen or (PACKABLE if "--packable" in args else CELLS)))
