"""Builds a benchmark scene: one .blend using N noise textures (PNG, about `size` px square each).

    python3 bench/make_texture_scene.py OUT_DIR [--textures 40] [--size 1450]
Noise does not compress, so 40 textures of 1450 px are about 330 MB on disk.
"""

from __future__ import annotations

import argparse
import os
import sys

import bpy
import numpy as np


def noise_png(path: str, size: int, seed: int) -> None:
    image = bpy.data.images.new(f"noise_{seed}", size, size, alpha=False)
    pixels = np.random.default_rng(seed).random(size * size * 4, dtype=np.float32)
    image.pixels.foreach_set(pixels)
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def main() -> None:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--textures", type=int, default=40)
    parser.add_argument("--size", type=int, default=1450)
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "textures"), exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0
    bpy.context.scene.render.engine = "CYCLES"  # what jobs render with (another engine is refused)
    blend = os.path.join(out, "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    for index in range(args.textures):
        path = os.path.join(out, "textures", f"noise_{index:02d}.png")
        noise_png(path, args.size, index)
        image = bpy.data.images.load(path)
        image.use_fake_user = True  # kept in the file, so it is a dependency BAT traces
    bpy.ops.file.make_paths_relative()
    bpy.ops.wm.save_as_mainfile(filepath=blend)


if __name__ == "__main__":
    main()
