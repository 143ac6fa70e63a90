"""Content-addressed upload on the real test cluster: a resubmitted scene sends nothing, directory mode
carries the texture as its own store object, and gc finds exactly what no job uses."""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import check_frame, make_sample, sha256


@pytest.fixture(autouse=True)
def own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job registry and hash cache of our own: other tests list the session's jobs and expect only theirs."""
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))


def _submit(scene: Path, *extra: str, preset: str = "testbed") -> dict:
    done = run_cli("submit", str(scene), "--preset", preset, "--frames", "1", "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _render_ok(job: str, dest: Path) -> None:
    waited = run_cli("wait", job, "--timeout", "600", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    got = run_cli("download", job, "--dest", str(dest), "--json")
    assert got.returncode == 0, got.stderr
    check_frame(dest / "frame_000001.png")  # colours of the texture: it reached the render


def test_second_submit_of_an_unchanged_scene_sends_nothing(testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "project", fresh=True)  # bytes the store has never seen
    first = _submit(scene)
    assert first["uploaded_files"] == 1 and first["uploaded_bytes"] > 100_000
    second = _submit(scene)
    assert second["uploaded_bytes"] == 0 and second["uploaded_files"] == 0 and second["skipped_files"] >= 1
    print(f"packed: first submit sent {first['uploaded_bytes']} bytes, the second {second['uploaded_bytes']}")

    root = f"{testbed.workdir}/braas-hpc-{testbed.user}"
    inodes = remote("stat -c %i " + " ".join(shlex.quote(f"{root}/jobs/{j['job']}/in/scene.blend")
                                                for j in (first, second))).stdout.split()
    assert len(inodes) == 2 and inodes[0] == inodes[1]  # both jobs link the one store object
    for job in (first, second):
        _render_ok(job["job"], tmp_path / job["job"])


def test_directory_mode_renders_the_texture_from_its_own_store_object(testbed, remote, tmp_path: Path
                                                                      ) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "project")
    texture = scene.parent / "textures" / "checker.png"
    submitted = _submit(scene, "--pack", "dir")
    assert submitted["uploaded_files"] + submitted["skipped_files"] == 2
    in_dir = f"{testbed.workdir}/braas-hpc-{testbed.user}/jobs/{submitted['job']}/in"
    listed = remote(f"cd {shlex.quote(in_dir)} && find . -type f -o -type l | sort").stdout.split()
    assert listed == ["./scene.blend", "./textures/checker.png"]
    stored = f"{testbed.workdir}/braas-hpc-{testbed.user}/store/{sha256(texture)[:2]}/{sha256(texture)}"
    assert remote(f"test -f {shlex.quote(stored)}").returncode == 0
    _render_ok(submitted["job"], tmp_path / "frames")

    again = _submit(scene, "--pack", "dir")
    assert again["uploaded_bytes"] == 0 and again["skipped_files"] == 2


def test_gc_lists_only_what_no_job_uses_and_removes_it_on_yes(testbed, remote, own_workdir, tmp_path: Path
                                                              ) -> None:  # noqa: ANN001
    # A working directory of its own: the sweep must not meet objects other tests upload meanwhile (they
    # run beside this one too) before their jobs link them.
    preset = own_workdir("tbgc")
    root = f"{testbed.workdir}/{preset}/braas-hpc-{testbed.user}"
    scene = make_sample(tmp_path / "project", fresh=True)  # its own scene bytes
    # Its own texture bytes too (PNG readers ignore data after the end chunk), so it can become an orphan.
    with (scene.parent / "textures" / "checker.png").open("ab") as texture:
        texture.write(secrets.token_bytes(16))
    job = _submit(scene, "--pack", "dir", preset=preset)["job"]
    dry = run_cli("gc", preset, "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["files"] == []

    assert run_cli("wait", job, "--timeout", "600", timeout=700).returncode == 0
    digests = set(remote(f"cd {shlex.quote(root + '/jobs/' + job + '/in')} && sha256sum scene.blend "
                         "textures/checker.png | cut -d' ' -f1").stdout.split())
    assert remote(f"rm -rf {shlex.quote(root + '/jobs/' + job)}").returncode == 0
    listed = json.loads(run_cli("gc", preset, "--json").stdout)
    orphan = {f["sha256"] for f in listed["files"]}
    assert digests <= orphan and listed["removed"] is False and listed["total_bytes"] > 0
    assert all(remote(f"test -f {root}/store/{d[:2]}/{d}").returncode == 0 for d in digests)  # dry run

    removed = run_cli("gc", preset, "--yes", "--json")
    assert removed.returncode == 0 and json.loads(removed.stdout)["removed"] is True
    assert all(remote(f"test -e {root}/store/{d[:2]}/{d}").returncode != 0 for d in digests)
    assert json.loads(run_cli("gc", preset, "--json").stdout)["files"] == []


def test_directory_mode_lists_missing_files_before_sending_anything(testbed, remote, tmp_path: Path
                                                                    ) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "project")
    (scene.parent / "textures" / "checker.png").unlink()
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1", "--pack", "dir")
    assert done.returncode == 2
    assert "Image 'checker.png' in sample.blend:" in done.stderr and "textures/checker.png" in done.stderr
    assert "Missing file" not in done.stderr  # BAT's own log line stays quiet


def test_directory_mode_reports_and_carries_files_from_outside_the_project(testbed, tmp_path: Path  # noqa: ANN001
                                                                          ) -> None:
    scene = make_sample(tmp_path / "project")
    shared = tmp_path / "shared"
    (scene.parent / "textures").rename(shared)  # the texture now lives beside the project, not in it
    repoint = (f"import bpy; bpy.ops.wm.open_mainfile(filepath={str(scene)!r}); "
               "i = bpy.data.images['checker.png']; i.filepath = '//../shared/checker.png'; "
               "bpy.ops.wm.save_mainfile()")
    subprocess.run([sys.executable, "-c", repoint], check=True, capture_output=True, timeout=300)

    submitted = _submit(scene, "--pack", "dir")
    assert submitted["outside_project"] and all(n.startswith("_outside_project/") for n in
                                                submitted["outside_project"])
    assert any(n.endswith("checker.png") for n in submitted["outside_project"])
    _render_ok(submitted["job"], tmp_path / "frames")  # the texture reached the render all the same

    plain = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1", "--pack", "dir")
    assert plain.returncode == 0 and "from outside the scene's folder" in plain.stdout


LINKED_SCENE = """
import bpy, math, sys
lib_path, main_path = sys.argv[-2:]
# The library: the sample's textured floor, moved into its own collection, saved beside the scene.
bpy.ops.wm.open_mainfile(filepath=lib_path)
floor = bpy.data.collections.new("Floor")
bpy.context.scene.collection.children.link(floor)
for obj in [o for o in bpy.data.objects if o.type == "MESH" and o.data.materials and
            o.data.materials[0].name == "checker_floor"]:
    for users in list(obj.users_collection):
        users.objects.unlink(obj)
    floor.objects.link(obj)
bpy.ops.wm.save_mainfile()
# The scene: the sample without its floor, linking the floor collection from the library.
bpy.ops.wm.save_as_mainfile(filepath=main_path)
for obj in list(bpy.data.collections["Floor"].objects):
    bpy.data.objects.remove(obj)
bpy.data.collections.remove(bpy.data.collections["Floor"])
with bpy.data.libraries.load(lib_path, link=True) as (src, dst):
    dst.collections = ["Floor"]
instance = bpy.data.objects.new("FloorInstance", None)
instance.instance_type = "COLLECTION"
instance.instance_collection = dst.collections[0]
bpy.context.scene.collection.objects.link(instance)
bpy.ops.wm.save_as_mainfile(filepath=main_path, relative_remap=True)
bpy.ops.file.make_paths_relative()
bpy.ops.wm.save_mainfile()
"""


def test_directory_mode_carries_linked_libraries_and_their_textures(testbed, tmp_path: Path  # noqa: ANN001
                                                                    ) -> None:
    sample = make_sample(tmp_path / "project" / "lib")  # project/lib/sample.blend + project/lib/textures/
    library = sample.with_name("floor.blend")
    sample.rename(library)
    scene = tmp_path / "project" / "shot.blend"
    script = tmp_path / "linked.py"
    script.write_text(LINKED_SCENE)
    done = subprocess.run([sys.executable, str(script), str(library), str(scene)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and scene.is_file(), done.stderr[-2000:]

    submitted = _submit(scene, "--pack", "dir")
    assert submitted["uploaded_files"] + submitted["skipped_files"] == 3  # scene, library, texture
    _render_ok(submitted["job"], tmp_path / "frames")  # the linked floor's texture reached the render
