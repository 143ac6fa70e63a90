"""One part of a split still, inside Blender on a compute node (render_task.py --split-frame ...).

Part K renders its own range of the still's samples: the same sample sequence a single render of all of
them draws (the scene's seed), cut in N (Cycles' sample subset), so the merge of the parts is that single
render. Each writes a multilayer EXR with what the finish step needs: every pass the scene has, the denoising data and
the vector pass (Cycles' denoise operator asks for both). Parts are not denoised (the merged image is,
once) and sample every pixel fully: adaptive sampling would stop pixels early, and the merge weighs each
part by its nominal sample count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import bpy


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(",") if n.strip())


@dataclass(frozen=True)
class Parts:
    frame: int  # the scene frame every part renders
    samples: tuple[int, ...]  # part K's samples at [K-1]
    offsets: tuple[int, ...]  # part K's first sample at [K-1]

    @classmethod
    def from_args(cls, frame: int, samples: str, offsets: str) -> Parts:
        parts = cls(frame, _numbers(samples), _numbers(offsets))
        if not parts.samples or len(parts.samples) != len(parts.offsets) or min(parts.samples) < 1:
            raise ValueError(f"a split still needs one sample count and one first sample per part: got samples "
                             f"{samples!r}, first samples {offsets!r}")
        return parts

    @property
    def total(self) -> int:
        return sum(self.samples)

    def check(self, part: int) -> None:
        if not 1 <= part <= len(self.samples):
            raise ValueError(f"part {part} is not one of the {len(self.samples)} parts")

    def file_name(self, part: int) -> str:
        return f"frame_{self.frame:06d}.part{part:03d}.exr"  # as braas_hpc.core.split.part_file_name


def prepare(scene: bpy.types.Scene, out_dir: str, frame: int) -> None:
    """Settings every part shares; a merge that failed before is forgotten (its finish step tries again)."""
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0+ lists file formats per media type
        settings.media_type = "MULTI_LAYER_IMAGE"
    settings.file_format = "OPEN_EXR_MULTILAYER"
    settings.color_depth = "32"  # the merge sums samples: keep full float precision until the end
    if hasattr(settings, "use_exr_interleave"):  # Blender 5.0+: a multi-part EXR, which the denoiser does not read
        settings.use_exr_interleave = True
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.time_limit = 0
    for layer in scene.view_layers:
        layer.cycles.denoising_store_passes = True
        layer.use_pass_vector = True
    failed = os.path.join(out_dir, f"frame_{frame:06d}.merge-failed")
    if os.path.lexists(failed):
        os.unlink(failed)


def use_part(scene: bpy.types.Scene, parts: Parts, part: int) -> dict[str, int]:
    """Part `part`'s range of the samples on the scene; returns its first sample and count."""
    parts.check(part)
    cycles = scene.cycles
    offset, count = parts.offsets[part - 1], parts.samples[part - 1]
    if hasattr(cycles, "use_sample_subset"):  # 4.5, 5.x: samples [offset, offset + count) of `samples`
        cycles.samples, cycles.use_sample_subset = parts.total, True
        cycles.sample_offset, cycles.sample_subset_length = offset, count
    else:  # Blender 4.2: the offset skips that many samples of the sequence, then `samples` are rendered
        cycles.samples, cycles.sample_offset = count, offset
    return {"offset": offset, "samples": count}
