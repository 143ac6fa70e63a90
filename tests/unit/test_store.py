"""The content-addressed store: hashing and its cache, the remote layout, and the remote scripts run for
real through the local transport (the same sh scripts the cluster runs)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from braas_hpc.core import store
from braas_hpc.core.errors import UsageError
from braas_hpc.core.jobs import JobPaths, store_path
from braas_hpc.core.transport.local import LocalTransport

DIGEST = "ab" + "0" * 62


def test_store_path_layout() -> None:
    assert store_path("/w/braas-hpc", DIGEST) == f"/w/braas-hpc/store/ab/{DIGEST}"
    paths = JobPaths("/w/braas-hpc", "job")
    assert paths.store_dir == "/w/braas-hpc/store"
    assert paths.store_file(DIGEST) == store_path("/w/braas-hpc", DIGEST)


@pytest.mark.parametrize("bad", ["", "AB" + "0" * 62, "ab", "../" + "0" * 61, DIGEST + "0"])
def test_store_path_refuses_what_is_not_a_digest(bad: str) -> None:
    with pytest.raises(ValueError):
        store_path("/w", bad)


def test_hash_cache_reads_a_file_once_until_it_changes(tmp_path: Path) -> None:
    data = tmp_path / "tex.png"
    data.write_bytes(b"x" * 3_000_000)
    with store.HashCache(tmp_path / "cache.sqlite") as cache:
        first = cache.digest(data)
        assert first == hashlib.sha256(data.read_bytes()).hexdigest()
        assert cache.digest(data) == first and cache.hashed == 1
    with store.HashCache(tmp_path / "cache.sqlite") as cache:  # kept across runs
        assert cache.digest(data) == first and cache.hashed == 0
        data.write_bytes(b"y" * 3_000_000)  # same size: the mtime tells
        os.utime(data, ns=(1, 1))
        assert cache.digest(data) == hashlib.sha256(b"y" * 3_000_000).hexdigest() and cache.hashed == 1


def test_hash_cache_remembers_packed_copies(tmp_path: Path) -> None:
    with store.HashCache(tmp_path / "cache.sqlite") as cache:
        assert cache.packed("key") is None
        cache.remember_packed("key", DIGEST)
        assert cache.packed("key") == DIGEST


@pytest.mark.parametrize("bad", ["/abs", "a/../b", "..", "a//b", "a\tb", "a\nb", "", "./a"])
def test_unsafe_names_in_in_dir_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        store.check_relative(bad)


def _tree(base: Path) -> dict[str, Path]:
    (base / "textures").mkdir(parents=True)
    (base / "scene.blend").write_bytes(b"BLENDER" * 1000)
    (base / "textures" / "a.png").write_bytes(b"a" * 5000)
    (base / "textures" / "same.png").write_bytes(b"a" * 5000)  # same content: one store object
    return {"scene.blend": base / "scene.blend", "textures/a.png": base / "textures" / "a.png",
            "textures/same.png": base / "textures" / "same.png"}


def test_upload_links_and_gc_through_the_real_scripts(tmp_path: Path) -> None:
    root = str(tmp_path / "remote" / "braas-hpc")
    files = _tree(tmp_path / "local")
    transport = LocalTransport()

    async def scenario() -> None:
        first = await store.upload_inputs(transport, root, f"{root}/jobs/j1/in", files)
        assert first == store.UploadReport(uploaded_bytes=7000 + 5000, uploaded_files=2, skipped_files=0)
        second = await store.upload_inputs(transport, root, f"{root}/jobs/j2/in", files)
        assert second == store.UploadReport(0, 0, 3)
        for job in ("j1", "j2"):
            linked = Path(root, "jobs", job, "in", "textures", "a.png")
            assert linked.read_bytes() == b"a" * 5000 and not linked.is_symlink()
        stored = Path(store_path(root, hashlib.sha256(b"a" * 5000).hexdigest()))
        assert stored.stat().st_nlink == 5  # the store's name + 2 names in each of two jobs
        assert stored.stat().st_mode & 0o777 == 0o444  # a job cannot write through its link
        assert await store.unreferenced(transport, root) == []

        shutil.rmtree(Path(root, "jobs"))
        orphans = await store.unreferenced(transport, root)
        assert sorted(f.size for f in orphans) == [5000, 7000]
        await store.remove(transport, root, orphans)
        assert await store.unreferenced(transport, root) == []
        assert not stored.exists()

    asyncio.run(scenario())


def test_symlinked_inputs_still_count_as_referenced(tmp_path: Path) -> None:
    root = str(tmp_path / "braas-hpc")
    files = _tree(tmp_path / "local")
    transport = LocalTransport()

    async def scenario() -> None:
        await store.upload_inputs(transport, root, f"{root}/jobs/j1/in", files)
        # What the fallback makes when hard links fail (store on another filesystem).
        link = Path(root, "jobs", "j1", "in", "scene.blend")
        target = store_path(root, hashlib.sha256(link.read_bytes()).hexdigest())
        link.unlink()
        link.symlink_to(target)
        assert [f.size for f in await store.unreferenced(transport, root)] == []

    asyncio.run(scenario())


def test_files_blender_opens_read_write_get_a_private_writable_copy(tmp_path: Path) -> None:
    root = str(tmp_path / "braas-hpc")
    files = _tree(tmp_path / "local")
    in_dir = Path(root, "jobs", "j1", "in")

    async def scenario() -> None:
        await store.upload_inputs(LocalTransport(), root, str(in_dir), files, copies={"textures/a.png"})
        # Again, as a resubmission links the same in/: the copy replaces whatever is there.
        await store.upload_inputs(LocalTransport(), root, str(in_dir), files, copies={"textures/a.png"})

    asyncio.run(scenario())
    copy, link = in_dir / "textures" / "a.png", in_dir / "textures" / "same.png"
    assert copy.read_bytes() == b"a" * 5000 and copy.stat().st_nlink == 1 and copy.stat().st_mode & 0o200
    assert link.stat().st_nlink == 2 and link.stat().st_mode & 0o777 == 0o444  # the store's name and same.png
    stored = Path(store_path(root, hashlib.sha256(b"a" * 5000).hexdigest()))
    assert stored.stat().st_mode & 0o777 == 0o444  # the store's file stays read-only


def test_linking_a_digest_the_store_lacks_fails(tmp_path: Path) -> None:
    from braas_hpc.core.errors import RemoteCommandError

    with pytest.raises(RemoteCommandError):
        asyncio.run(store.link_inputs(LocalTransport(), str(tmp_path), str(tmp_path / "in"), {"x": DIGEST}))
    assert not (tmp_path / "in" / "x").exists()  # no dangling link


def test_gc_removes_temp_files_of_failed_uploads_only_when_a_day_old(tmp_path: Path) -> None:
    root = str(tmp_path / "braas-hpc")
    transport = LocalTransport()
    digest = "ab" + "0" * 62
    shelf = Path(store_path(root, digest)).parent
    shelf.mkdir(parents=True)
    old_put = shelf / f".{digest}.braas-part"  # put()'s resumable temp file
    old_store = shelf / f"{digest}.1f2e.part"  # the batched upload's temp file
    young = shelf / f".{'ab' + '1' * 62}.braas-part"  # may be an upload running now
    stranger = shelf / ".notes.braas-part"  # not a name we make: never touched
    for path in (old_put, old_store, young, stranger):
        path.write_bytes(b"x" * 100)
    two_days_ago = time.time() - 2 * 86400
    for path in (old_put, old_store, stranger):
        os.utime(path, (two_days_ago, two_days_ago))

    async def scenario() -> None:
        found = await store.scan(transport, root)
        assert found.unreferenced == []
        assert sorted(f.digest for f in found.abandoned) == sorted([old_put.name, old_store.name])
        os.utime(old_store)  # written again since the scan (a resumed upload): must stay
        await store.remove(transport, root, [], found.abandoned)
        assert not old_put.exists()
        assert old_store.exists() and young.exists() and stranger.exists()

    asyncio.run(scenario())
