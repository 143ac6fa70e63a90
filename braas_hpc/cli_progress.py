"""The core's progress (core.progress: a stage, and how far it is) as one live line on a terminal: the
stage, a bar, bytes in human units with rate and time left for a transfer, N/M for frames. Nothing is
drawn for `--json`, or when stderr is not a terminal (a script, a log file, CI)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from .core import progress

BYTE_STAGES = ("uploading", "downloading")  # stages whose figures are bytes (the others count things)


def _in_bytes(task: Task) -> bool:
    return bool(task.fields.get("bytes"))


class _Amount(ProgressColumn):
    """"1.2/3.4 GB at 45.6 MB/s, 0:00:49 left" for bytes; "7/12" for frames; nothing without a measure."""

    def render(self, task: Task) -> Text:
        if not task.total:
            return Text("")
        if not _in_bytes(task):
            return Text(f"{task.completed:.0f}/{task.total:.0f}")
        said = f"{decimal(int(task.completed))}/{decimal(int(task.total))}"
        if task.speed:
            said += f" at {decimal(int(task.speed))}/s"
        if task.time_remaining is not None:
            minutes, seconds = divmod(int(task.time_remaining), 60)
            said += f", {minutes // 60}:{minutes % 60:02d}:{seconds:02d} left"
        return Text(said)


@contextmanager
def shown(console: Console, quiet: bool) -> Iterator[None]:
    """Draw what the core reports inside the block on `console` (stderr), unless `quiet` or not a terminal."""
    if quiet or not console.is_terminal:
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(bar_width=24), _Amount(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        current: dict[str, object] = {}

        def listener(stage: str, done: int, total: int) -> None:
            if current.get("stage") != stage:  # a new stage starts its own line: rate and ETA from zero
                if "task" in current:
                    bar.remove_task(current["task"])  # type: ignore[arg-type]
                current["stage"] = stage
                current["task"] = bar.add_task(stage, total=total or None,
                                               bytes=stage.split()[0] in BYTE_STAGES)
            bar.update(current["task"], completed=done, total=total or None)  # type: ignore[arg-type]

        with progress.listening(listener):
            yield
