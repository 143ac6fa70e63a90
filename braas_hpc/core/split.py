"""Split stills: one frame rendered as N array tasks ("parts"), each rendering its own range of the scene's
samples (Cycles' sample subset: the same sample sequence a single render draws, cut in N), merged on the
cluster by Cycles' sample-weighted merge of multilayer EXRs, then denoised once.

A split job's units of work are its parts: `JobSpec.frames` holds the part numbers 1..N (so rounds,
recovery and resubmission plan parts exactly as they plan frames), `JobSpec.split_frame` the scene frame
they all render. Part K always renders samples `part_offsets[K-1]` to `part_offsets[K-1] +
part_samples[K-1]` of the sequence, so a lost part rendered again is the same part, and the merge of the
parts is the single render. Each part is a multilayer EXR beside the frame it makes
(`frame_NNNNNN.partKKK.exr`, never downloaded); the job is complete when the merged frame
(`frame_NNNNNN.<ext>`, the scene's format) exists.

Standard library only: it runs on the cluster too.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from .errors import UsageError

MIN_PARTS = 2


def part_samples(total: int, parts: int) -> tuple[int, ...]:
    """Sample counts that add up to `total`, as even as they go: 100 in 3 -> (34, 33, 33)."""
    base, extra = divmod(total, parts)
    return tuple(base + 1 if k < extra else base for k in range(parts))


def part_offsets(samples: tuple[int, ...]) -> tuple[int, ...]:
    """Each part's first sample: (34, 33, 33) -> (0, 34, 67)."""
    return tuple(sum(samples[:k]) for k in range(len(samples)))


def check_split(parts: int, frames: Sequence[int], samples: int, source: str) -> None:
    """Refuse a split Cycles cannot make: an animation, fewer than two parts, more parts than samples."""
    if len(frames) != 1:
        raise UsageError(f"--split-samples renders one still; {source} gives {len(frames)} frames: choose one "
                         "frame (e.g. --frames 1) or leave the split out for an animation")
    if parts < MIN_PARTS:
        raise UsageError(f"--split-samples needs at least {MIN_PARTS} parts, got {parts}")
    if parts > samples:
        raise UsageError(f"--split-samples {parts} is more parts than the {samples} samples of {source}: every "
                         f"part needs one sample at least (use {samples} or fewer, or raise the samples)")


def part_file_name(frame: int, part: int) -> str:
    return f"frame_{frame:06d}.part{part:03d}.exr"


def merge_failed_name(frame: int) -> str:
    """Written by the finish step when every part is there and the merge failed (it holds the reason);
    removed by the next part rendered, so a new round's finish step tries again."""
    return f"frame_{frame:06d}.merge-failed"


def missing_parts(split_frame: int, parts: Sequence[int], present: Collection[str]) -> list[int]:
    return [p for p in parts if part_file_name(split_frame, p) not in present]
