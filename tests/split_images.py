"""Split stills, measured in a Blender process (bpy): the tests' and the bench's scene, its reference
renders, and the error of an image against them.

    python3 tests/split_images.py scene OUT.blend [--size W H] [--samples N] [--format F] [--denoise]
    python3 tests/split_images.py measure SCENE.blend DIR IMAGE... [--reference-samples N]  # JSON, last line

`measure` renders into DIR (once, kept): a reference of REFERENCE_SAMPLES samples (another seed) and a
single render of the scene's own samples, as the job would without a split; then prints, for the single
render and each IMAGE, the RMSE against the reference and against the single render, and the mean.
Images of every kind Blender reads, multilayer EXRs too (their first layer's Combined).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import bpy
import numpy as np

REFERENCE_SAMPLES = 1024
REFERENCE_SEED = 4242


def make_scene(out: str, size: tuple[int, int], samples: int, file_format: str, denoise: bool) -> None:
    """The factory scene (cube, light, camera) as a Cycles still: small, quick, and noisy at low samples."""
    bpy.ops.wm.read_factory_settings(use_empty=False)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = denoise
    scene.cycles.use_adaptive_sampling = False  # as the parts render: the single render is their sum's equal
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.frame_start = scene.frame_end = scene.frame_current = 1
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "MULTI_LAYER_IMAGE" if file_format == "OPEN_EXR_MULTILAYER" else "IMAGE"
    settings.file_format = file_format
    if file_format.startswith("OPEN_EXR"):
        settings.color_depth = "32"
    bpy.ops.wm.save_as_mainfile(filepath=out)


def pixels(path: str) -> np.ndarray:
    """RGB as floats (scene-linear for EXR); a multilayer EXR goes through Blender's writer first."""
    image = bpy.data.images.load(path, check_existing=False)
    if not image.size[0]:
        scene = bpy.context.scene
        settings = scene.render.image_settings
        if hasattr(settings, "media_type"):
            settings.media_type = "IMAGE"
        settings.file_format, settings.color_depth = "OPEN_EXR", "32"
        flat = os.path.join(os.path.dirname(os.path.abspath(path)), ".measure-flat.exr")
        image.save_render(flat, scene=scene)
        bpy.data.images.remove(image)
        image = bpy.data.images.load(flat, check_existing=False)
    width, height = image.size
    data = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(data)
    bpy.data.images.remove(image)
    return data.reshape(height, width, 4)[..., :3].astype(np.float64)


def render(scene_path: str, samples: int, seed: int | None, out: str) -> float:
    """A plain render of the scene (no split, no denoising, every pixel fully sampled) as a float EXR."""
    bpy.ops.wm.open_mainfile(filepath=scene_path)
    scene = bpy.context.scene
    scene.cycles.samples = samples
    if seed is not None:  # None: the scene's own seed, as its job renders it
        scene.cycles.seed = seed
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "IMAGE"
    settings.file_format, settings.color_depth = "OPEN_EXR", "32"
    scene.render.filepath = out
    started = time.monotonic()
    bpy.ops.render.render(write_still=True)
    return time.monotonic() - started


def measure(scene_path: str, folder: str, images: list[str], reference_samples: int = REFERENCE_SAMPLES
            ) -> dict[str, object]:
    os.makedirs(folder, exist_ok=True)
    reference, single = os.path.join(folder, "reference.exr"), os.path.join(folder, "single.exr")
    seconds = {}
    if not os.path.isfile(reference):
        seconds["reference"] = render(scene_path, reference_samples, REFERENCE_SEED, reference)
    if not os.path.isfile(single):
        bpy.ops.wm.open_mainfile(filepath=scene_path)
        seconds["single"] = render(scene_path, bpy.context.scene.cycles.samples, None, single)
    truth, alone = pixels(reference), pixels(single)

    def error(path: str) -> dict[str, float]:
        found = pixels(path)
        if found.shape != truth.shape:
            return {"rmse": float("inf"), "vs_single": float("inf"), "mean": float(found.mean()) if found.size else 0.0}
        return {"rmse": float(np.sqrt(np.mean((found - truth) ** 2))), "mean": float(found.mean()),
                "vs_single": float(np.sqrt(np.mean((found - alone) ** 2)))}

    return {"reference_mean": float(truth.mean()), "single": error(single), "seconds": seconds,
            "images": {path: error(path) for path in images}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="split_images.py")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("scene")
    make.add_argument("out")
    make.add_argument("--size", type=int, nargs=2, default=(64, 36))
    make.add_argument("--samples", type=int, default=64)
    make.add_argument("--format", default="OPEN_EXR")
    make.add_argument("--denoise", action="store_true")
    meas = sub.add_parser("measure")
    meas.add_argument("scene")
    meas.add_argument("folder")
    meas.add_argument("images", nargs="*")
    meas.add_argument("--reference-samples", type=int, default=REFERENCE_SAMPLES)
    args = parser.parse_args(argv)
    if args.command == "scene":
        make_scene(args.out, tuple(args.size), args.samples, args.format, args.denoise)
    else:
        print(json.dumps(measure(args.scene, args.folder, args.images, args.reference_samples)), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
