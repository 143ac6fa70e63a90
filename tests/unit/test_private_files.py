"""What braas-hpc keeps on the user's machine (job registry, hashes with local paths, presets, records,
rendered frames) is the user's alone: directories 0700, files 0600, with the usual umask 022."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc.core import blender_version, intents, paths, registry, transfer
from braas_hpc.core.cluster_blender import InstalledBlender, record_blender
from braas_hpc.core.jobs import JobSpec
from braas_hpc.core.store import HashCache
from braas_hpc.core.user_presets import save_user_preset

pytestmark = pytest.mark.skipif(os.name != "posix", reason="Unix modes")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _open_to_others(root: Path) -> list[str]:
    found = [root, *root.rglob("*")]
    return [f"{p} {stat.filemode(p.stat().st_mode)}" for p in found if p.stat().st_mode & 0o077]


def test_everything_written_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None) -> None:
    config, data = tmp_path / "config", tmp_path / "data"
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(config))
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(data))
    spec = JobSpec(name="j-20260101-000000-abcd", preset="local", scene="/s.blend", frames=(1,), tasks=((1,),))
    registry.add_job(spec, "/w/braas-hpc", {}, "PENDING")
    intents.remember("abc", spec.name)
    blender_version._write_cache({"x": [4, 5, 0]})
    record_blender("mysite", InstalledBlender("blender"))
    save_user_preset("mysite", {"workdir": "/scratch/me"}, base="local")
    ledger = transfer._Ledger(spec.name, tmp_path / "dest")
    ledger.save()
    HashCache().close()  # the store's own file: created as the store does
    assert _open_to_others(config) == []
    assert _open_to_others(data) == []
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_existing_default_directories_are_closed_to_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            umask_022: None) -> None:
    """Made 0755 by an earlier version: closed on first use (only braas-hpc's own default directories)."""
    monkeypatch.delenv("BRAAS_HPC_CONFIG_DIR", raising=False)
    monkeypatch.delenv("BRAAS_HPC_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    for sub in ("xdg-config", "xdg-data"):
        (tmp_path / sub / "braas-hpc").mkdir(parents=True, mode=0o755)
    assert paths.config_dir() == tmp_path / "xdg-config" / "braas-hpc"
    assert paths.data_dir() == tmp_path / "xdg-data" / "braas-hpc"
    for sub in ("xdg-config", "xdg-data"):
        assert stat.S_IMODE((tmp_path / sub / "braas-hpc").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / sub).stat().st_mode) == 0o755  # not ours: left as it is
