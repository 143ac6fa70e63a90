"""The log tails script, run by a real shell on real files (the local transport)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from braas_hpc.core.logs import read_tails
from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.transport.local import LocalTransport


def _tails(log_dir: Path, task: int | None = None, lines: int = 60, scheduler: str = "slurm") -> dict[str, str]:
    return asyncio.run(read_tails(LocalTransport(), str(log_dir), task, lines, scheduler_for(scheduler)))


def test_tails_of_every_log_or_of_one_task(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    names = ["task-1.log", "task-11.log", "r1-task-1.log", "r2-task-11.log", "slurm-5_1.out", "slurm-5_11.out",
             "slurm-r1-9_1.out", "finish.log", "r1-finish.log"]
    for name in names:
        (logs / name).write_text("".join(f"{name} line {i}\n" for i in range(1, 101)))
    (logs / "notes.txt").write_text("not a log\n")
    (logs / "dir.log").mkdir()  # not a file

    every = _tails(logs, lines=2)
    assert list(every) == sorted(names)  # in name order, one call
    assert every["task-1.log"] == "task-1.log line 99\ntask-1.log line 100\n"

    one = _tails(logs, task=1, lines=1)
    assert list(one) == ["r1-task-1.log", "slurm-5_1.out", "slurm-r1-9_1.out", "task-1.log"]  # task 11 is not 1
    assert one["slurm-r1-9_1.out"] == "slurm-r1-9_1.out line 100\n"
    assert _tails(logs, task=11, lines=1).keys() == {"task-11.log", "r2-task-11.log", "slurm-5_11.out"}
    assert _tails(logs, task=3) == {}
    assert _tails(logs, task=1, scheduler="pbs").keys() == {"task-1.log", "r1-task-1.log"}  # no Slurm output
    assert _tails(tmp_path / "not-there") == {}  # no task has started yet

    (logs / "task-3.log").write_bytes(b"crash \x00\x01 dump\nlast words\n")  # a NUL would split the answer
    assert _tails(logs, task=3) == {"task-3.log": "crash \x01 dump\nlast words\n"}



class _Measured(LocalTransport):
    """The local transport, remembering how much each answer held."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    async def run(self, argv, **kwargs):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN003, ANN201
        done = await super().run(argv, **kwargs)
        self.sizes.append(len(done.stdout.encode()))
        return done


def test_a_log_without_newlines_is_cut_with_a_note(tmp_path: Path) -> None:
    """`tail -n` of a log that never ends a line is the whole log: 20 MiB came back for 60 'lines'."""
    from braas_hpc.core.logs import TAIL_BYTES

    logs = tmp_path / "log"
    logs.mkdir()
    with (logs / "task-1.log").open("wb") as stream:
        stream.write(b"start " + b"x" * (20 << 20) + b" THE END")
    (logs / "task-2.log").write_text("fine\n")
    measured = _Measured()
    tails = asyncio.run(read_tails(measured, str(logs), None, 60))
    assert measured.sizes[0] < 2 * TAIL_BYTES + 1000  # cut on the cluster, not here
    assert tails["task-1.log"].startswith("[braas-hpc: cut to the last") and tails["task-1.log"].endswith(" THE END")
    assert len(tails["task-1.log"]) < TAIL_BYTES + 200
    assert tails["task-2.log"] == "fine\n"
