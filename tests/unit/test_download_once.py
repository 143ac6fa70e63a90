"""Frames fetched at once (core.transfer.download_once) through the local transport: what one frame's
failure does to the others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from braas_hpc.core import registry, transfer
from braas_hpc.core.context import JobContext
from braas_hpc.core.errors import TransferError
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport.base import Progress
from braas_hpc.core.transport.local import LocalTransport


class Flaky(LocalTransport):
    """Fails the first transfer of each named frame: `lost` by a connection reset under it (a failure that
    get() passes on, as a back end reconnecting under transfers made at once can), `garbled` with
    other bytes than the cluster's (the file changed after its hash)."""

    def __init__(self, lost: set[str] = frozenset(), garbled: set[str] = frozenset()) -> None:
        super().__init__()
        self.lost, self.garbled, self.fetches = set(lost), set(garbled), []

    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        name = Path(remote).name
        self.fetches.append(name)
        await asyncio.sleep(0.01)  # the others are under way meanwhile
        if name in self.lost:
            self.lost.discard(name)
            raise ConnectionResetError("cut")  # what get() does not resume by itself
        await super()._receive(remote, local, offset, progress)
        if name in self.garbled:
            local.write_bytes(bytes(local.stat().st_size))  # as long, other bytes


def _job(tmp_path: Path, transport: LocalTransport, frames: int = 4) -> JobContext:
    paths = JobPaths(str(tmp_path / "cluster" / "braas-hpc"), "job-20260101-000000-abcd")
    Path(paths.out_dir).mkdir(parents=True)
    for n in range(1, frames + 1):
        Path(paths.out_dir, f"frame_{n:06d}.png").write_bytes(f"frame {n}".encode() * 1000)
    spec = JobSpec(name=paths.name, preset="local", scene="/s.blend", frames=tuple(range(1, frames + 1)),
                   tasks=((1,),))
    registry.add_job(spec, paths.root, {}, "COMPLETED")
    return JobContext(registry.get_job(paths.name), load_preset("local"), None, transport)


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))


def test_a_frame_cut_off_among_others_is_fetched_again_alone(tmp_path: Path) -> None:
    transport = Flaky(lost={"frame_000002.png"})
    dest = tmp_path / "frames"
    seen: list[tuple[int, int]] = []
    result = asyncio.run(transfer.download_once(_job(tmp_path, transport), dest, lambda d, t: seen.append((d, t))))
    assert result.downloaded == 4 and sorted(p.name for p in dest.iterdir()) == [
        f"frame_{n:06d}.png" for n in range(1, 5)]
    assert transport.fetches.count("frame_000002.png") == 2
    assert seen[-1] == (4 * 7000, 4 * 7000)  # one progress over all the frames


def test_a_frame_that_does_not_match_fails_the_download_but_not_the_others(tmp_path: Path) -> None:
    transport = Flaky(garbled={"frame_000003.png"})
    dest = tmp_path / "frames"
    job = _job(tmp_path, transport)
    with pytest.raises(TransferError, match="frame_000003.png does not match the cluster's copy"):
        asyncio.run(transfer.download_once(job, dest))
    assert sorted(p.name for p in dest.iterdir()) == ["frame_000001.png", "frame_000002.png", "frame_000004.png"]
    assert transport.fetches.count("frame_000003.png") == 1  # a wrong copy is not fetched again and again
    transport.garbled.clear()
    again = asyncio.run(transfer.download_once(job, dest))
    assert (again.downloaded, again.skipped) == (1, 3)  # the others were kept as verified
