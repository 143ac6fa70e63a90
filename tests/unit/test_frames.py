from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from braas_hpc.core.errors import UsageError
from braas_hpc.core.frames import MAX_FRAMES, chunk_frames, format_frames, parse_frames


@pytest.mark.parametrize(
    ("spec", "frames"),
    [
        ("7", [7]),
        ("1-4", [1, 2, 3, 4]),
        ("1-10:3", [1, 4, 7, 10]),
        ("1,5,10-12", [1, 5, 10, 11, 12]),
        (" 3 , 1-2 ", [1, 2, 3]),
        ("2,2,1-3", [1, 2, 3]),
        ("0", [0]),
    ],
)
def test_parse_frames(spec: str, frames: list[int]) -> None:
    assert parse_frames(spec) == frames


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("5-1", "ends before it starts"),
        ("a-b", "'a-b' is not a frame number"),
        ("", "empty"),
        ("1-10:0", "step"),
        ("1,,2", "'' is not a frame number"),
        ("-3", "is not a frame number"),
        ("1;rm -rf /", "is not a frame number"),
        ("1-9999999", "above Blender's limit"),
        (f"1-{MAX_FRAMES + 1}", "more than"),
    ],
)
def test_parse_frames_rejects(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_frames(spec)
    assert info.value.exit_code == 2


def test_chunks_keep_order_and_size() -> None:
    assert chunk_frames([1, 2, 3, 4, 5, 6], 2) == [[1, 2], [3, 4], [5, 6]]
    assert chunk_frames([1, 5, 9], 2) == [[1, 5], [9]]
    with pytest.raises(UsageError):
        chunk_frames([1], 0)


@given(st.sets(st.integers(min_value=0, max_value=5000), min_size=1, max_size=200))
def test_format_then_parse_round_trips(frames: set[int]) -> None:
    assert parse_frames(format_frames(frames)) == sorted(frames)


@given(st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=100, unique=True),
       st.integers(min_value=1, max_value=17))
def test_chunks_cover_every_frame_once(frames: list[int], chunk: int) -> None:
    tasks = chunk_frames(sorted(frames), chunk)
    assert [f for task in tasks for f in task] == sorted(frames)
    assert all(1 <= len(task) <= chunk for task in tasks)
