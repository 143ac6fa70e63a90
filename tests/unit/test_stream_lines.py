"""Reading a command's output lines (transport.base.merge_lines) when a reader dies: asyncssh's readers
raise when the connection drops, instead of ending. The lines must end with a ConnectionLost, not wait
for ever for an end that never comes (seen as a submission hanging after a cut)."""

from __future__ import annotations

import asyncio

import pytest

from braas_hpc.core.errors import ConnectionLost
from braas_hpc.core.transport.base import merge_lines


class _Reader:
    def __init__(self, lines: list[bytes], then: BaseException | None = None) -> None:
        self.lines, self.then = list(lines), then

    async def readline(self) -> bytes:
        if self.lines:
            return self.lines.pop(0)
        if self.then is not None:
            raise self.then
        return b""


async def _read(stdout: _Reader, stderr: _Reader) -> list[str]:
    lines, _stop = merge_lines(stdout, stderr)
    return [line.text async for line in lines]


def test_lines_then_their_end() -> None:
    got = asyncio.run(_read(_Reader([b"one\n", b"two\r\n"]), _Reader([b"err\n"])))
    assert sorted(got) == ["err", "one", "two"]


def test_a_reader_that_raises_ends_the_lines_with_a_lost_connection() -> None:
    with pytest.raises(ConnectionLost, match="dropped"):
        asyncio.run(asyncio.wait_for(_read(_Reader([b"one\n"], BrokenPipeError("gone")), _Reader([])), 10))
