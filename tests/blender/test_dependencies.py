"""What a scene needs reaches the job in both pack modes, checked here without a cluster: how the inputs
are staged and packed, the `local` render of the scene without its files (so the cluster tests' colours
can only come from the files), and the refusals before anything is sent."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from blender_asset_tracer import trace

from braas_hpc.core import packing
from braas_hpc.core.errors import UsageError
from tests.deps_layout import FRAME
from tests.helpers import DEPS_SCRIPT, REPO, bpy_site, deps_cells, make_deps_scene

RENDER = """
import bpy, sys
bpy.ops.wm.open_mainfile(filepath=sys.argv[-2])
scene = bpy.context.scene
scene.frame_set(int(sys.argv[-3]))
scene.render.filepath = sys.argv[-1]
scene.render.image_settings.file_format = "PNG"
bpy.ops.render.render(write_still=True)
"""


@pytest.fixture(scope="module")
def full_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_deps_scene(tmp_path_factory.mktemp("deps") / "project")


@pytest.fixture(scope="module")
def packable_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_deps_scene(tmp_path_factory.mktemp("packable") / "project", packable=True)


def _kinds(scene: Path) -> list[str]:
    import json
    return json.loads((scene.parent / "deps.json").read_text())["kinds"]


def test_without_its_files_the_scene_shows_none_of_their_colours(full_scene: Path, tmp_path: Path) -> None:
    """The cluster tests check colours; here the same scene, its files left behind, shows none of them."""
    alone = tmp_path / "alone.blend"
    shutil.copyfile(full_scene, alone)
    image = tmp_path / "frame.png"
    subprocess.run([sys.executable, "-c", RENDER, str(FRAME), str(alone), str(image)], check=True,
                   capture_output=True, timeout=300)
    cells = deps_cells(image, _kinds(full_scene))
    assert not any(cells.values()), cells


def test_directory_mode_stages_point_caches_under_the_name_the_job_opens(full_scene: Path, tmp_path: Path) -> None:
    tree = packing.stage_tree(full_scene, tmp_path / "tree")
    names = set(tree.files)
    point_caches = {n for n in names if n.endswith(".bphys")}
    assert point_caches and all(n.startswith("blendcache_scene/") for n in point_caches), names
    # A bake's folder is written in the .blend: it keeps its place.
    bakes = {n for n in names if n.startswith(("blendcache_deps/bake_bake/", "blendcache_deps/simulation_simulation/"))}
    assert len(bakes) > 2 and bakes == tree.copies, (bakes, tree.copies)  # Blender opens them read-write
    for expected in ("scene.blend", "abc/plane.abc", "cache/plane.pc2", "seq/tile_0002.png", "udim/tile.1002.png",
                     "lib/library.blend", "lib/textures/lib.png", "fonts/block.ttf"):
        assert expected in names


def test_packed_mode_refuses_to_drop_what_blender_cannot_pack(full_scene: Path, tmp_path: Path) -> None:
    with pytest.raises(packing.CannotPack) as raised:
        asyncio.run(packing.pack_scene(full_scene, tmp_path / "packed.blend"))
    blocks = " ".join(raised.value.blocks)
    for kind in ("tile_0001.png", "plane.abc", "disk cache", "Volume 'volume'", "Movie clip 'clip.mkv'",
                 "external displacement", "Object 'mesh_cache' modifier"):
        assert kind in blocks, blocks
    assert not (tmp_path / "packed.blend").exists()
    # An interactive session sends one .blend all the same, and is told what it lacks.
    kept = asyncio.run(packing.pack_scene(full_scene, tmp_path / "kept.blend", keep_unpacked=True))
    assert kept.output.is_file() and sorted(kept.unpacked) == sorted(raised.value.blocks)


def test_packed_mode_packs_linked_libraries_udim_tiles_and_fonts_into_one_file(packable_scene: Path,
                                                                              tmp_path: Path) -> None:
    packed = tmp_path / "packed" / "scene.blend"
    asyncio.run(packing.pack_scene(packable_scene, packed))
    assert [u.asset_path for u in trace.deps(packed)] == []  # no file left to find on the cluster
    kinds = _kinds(packable_scene)
    hidden = packable_scene.parent.with_name("hidden")
    packable_scene.parent.rename(hidden)  # the copy's paths still point there: it must not need them
    try:
        image = tmp_path / "frame.png"
        subprocess.run([sys.executable, "-c", RENDER, str(FRAME), str(packed), str(image)], check=True,
                       capture_output=True, timeout=300)
    finally:
        hidden.rename(packable_scene.parent)
    cells = deps_cells(image, kinds)
    assert all(cells.values()), cells


def test_missing_sequence_frames_tiles_and_caches_are_listed_with_their_data_block(full_scene: Path,
                                                                                   tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(full_scene.parent, project)
    for gone in ("seq", "udim", "abc", "blendcache_deps"):
        shutil.rmtree(project / gone)
    with pytest.raises(UsageError) as raised:
        packing.check_missing(project / "deps.blend")
    text = str(raised.value)
    for expected in ("Image 'tile_0001.png'", "Image 'tile.1001.png'", "Cache file 'plane.abc'",
                     "Object 'point_cache.modifiers[0]'", "Object 'bake.modifiers[0].bakes[0]'",
                     "seq/tile_0001.png", "abc/plane.abc"):
        assert expected in text, text


@pytest.mark.parametrize("content", [b"", b"BLENDER-v405RENDH" + bytes(64), b"not a blend file at all"])
def test_a_damaged_blend_is_refused_with_its_name(tmp_path: Path, content: bytes) -> None:
    scene = tmp_path / "broken.blend"
    scene.write_bytes(content)
    with pytest.raises(UsageError, match="broken.blend"):
        packing.stage_tree(scene, tmp_path / "tree")
    with pytest.raises(UsageError, match="broken.blend"):
        asyncio.run(packing.pack_scene(scene, tmp_path / "packed.blend"))


def test_files_saved_by_blender_5_are_traced_into_linked_materials(tmp_path: Path) -> None:
    """blender-asset-tracer reads Blender 5.0 files (new header, zstd); the textures of linked materials
    are found too (BAT 1.23 alone loses them: see packing._node_trees)."""
    env = {**os.environ, "PYTHONPATH": bpy_site("5.0.1")}
    subprocess.run([sys.executable, str(DEPS_SCRIPT), str(tmp_path / "project")], check=True, capture_output=True,
                   timeout=300, env=env)
    scene = tmp_path / "project" / "deps.blend"
    made_by = subprocess.run([sys.executable, "-c", "import bpy; print(bpy.app.version[0])"], env=env,
                             capture_output=True, text=True, check=True).stdout.split()[-1]
    assert made_by == "5"
    names = set(packing.stage_tree(scene, tmp_path / "tree").files)
    for expected in ("lib/library.blend", "lib/textures/lib.png", "seq/tile_0002.png", "abc/plane.abc",
                     "udim/tile.1002.png", "fonts/block.ttf", "cache/plane.pc2"):
        assert expected in names, sorted(names)
    assert any(n.startswith("blendcache_scene/") for n in names)


def test_packed_mode_sends_the_folder_with_a_note_and_remembers_it(full_scene: Path, user_dirs: dict[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the service on the `local` preset (its own store, no render): the first packed-mode
    submission finds out Blender cannot pack the scene; an unchanged scene is not given to Blender again."""
    from braas_hpc.core import delivery, service
    from braas_hpc.core.transport import transport_for

    def prepare() -> delivery.PreparedJob:
        spec, preset = service.build_spec(service.SubmitRequest(scene=full_scene, preset="local", frames="2"))
        return asyncio.run(service.prepare_job(spec, preset, transport_for(preset)))

    first = prepare()
    assert len(first.upload.notes) == 1 and "cannot pack" in first.upload.notes[0]
    in_dir = Path(first.in_dir)
    assert (in_dir / "blendcache_scene").is_dir() and (in_dir / "vdb" / "cube.vdb").is_file()

    async def no_packing(*_: object) -> None:
        raise AssertionError("Blender was asked to pack a scene it could not pack last time")
    monkeypatch.setattr(delivery, "pack_scene", no_packing)
    again = prepare()
    assert again.upload.notes == first.upload.notes and again.upload.uploaded_files == 0


def test_a_bake_blender_5_cannot_pack_is_not_silently_left_out(tmp_path: Path) -> None:
    """Blender 5.0's pack_all marks a geometry-nodes bake packed, then stops on it: the copy would render
    without it. pack_scene.py (run by Blender 5.0) refuses to write such a copy."""
    env = {**os.environ, "PYTHONPATH": bpy_site("5.0.1")}
    project = tmp_path / "project"
    subprocess.run([sys.executable, str(DEPS_SCRIPT), str(project), "--only", "bake"], check=True,
                   capture_output=True, timeout=300, env=env)
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(REPO / "braas_hpc" / "bpy_blender.py"), "-b",
                           str(project / "deps.blend"), "-P", str(packing.PACK_SCRIPT), "--", "--out",
                           str(tmp_path / "copy.blend"), "--report", str(report)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 4, done.stderr[-2000:]
    assert "packing stopped" in report.read_text() and not (tmp_path / "copy.blend").exists()


PHYSICS = """
import bpy, sys
bpy.ops.wm.read_factory_settings(use_empty=True)
for kind in ("OCEAN", "CLOTH", "SOFT_BODY", "DYNAMIC_PAINT", "MESH_CACHE", "MESH_SEQUENCE_CACHE", "MULTIRES",
             "NODES", "PARTICLE_SYSTEM", "FLUID", "EXPLODE", "WAVE"):
    bpy.ops.mesh.primitive_plane_add()
    modifier = bpy.context.object.modifiers.new(kind.lower(), kind)
    if kind == "FLUID":
        modifier.fluid_type = "DOMAIN"
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])
"""


def test_modifiers_that_could_read_files_but_do_not_are_packed(tmp_path: Path) -> None:
    """A scene with each modifier that can read a file, none of them set up to: one packed copy."""
    scene = tmp_path / "physics.blend"
    subprocess.run([sys.executable, "-c", PHYSICS, str(scene)], check=True, capture_output=True, timeout=300)
    report = asyncio.run(packing.pack_scene(scene, tmp_path / "packed.blend"))
    assert report.output.is_file() and report.unpacked == ()
