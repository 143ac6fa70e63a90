"""The layout of the scene tests/deps_scene.py builds, readable without Blender (the tests check renders with it)."""

from __future__ import annotations

FRAME = 2  # the frame the tests render: sequences and caches show their frame-2 colour there
COLUMNS, ROWS = 5, 3
RESOLUTION = (120, 72)  # 24 px per cell
CELLS = {"library": (0, 0), "sequence": (1, 0), "udim": (2, 0), "movie": (3, 0),
         "alembic": (0, 1), "mesh_cache": (1, 1), "volume": (2, 1), "point_cache": (3, 1),
         "bake": (0, 2), "multires": (1, 2), "font": (2, 2), "image": (3, 2), "simulation": (4, 0)}
# What Blender 4.5 packs (5.x does not pack these bakes).
PACKABLE = ("library", "udim", "font", "image", "bake", "simulation")
# sRGB 8-bit colours the render must show (emission shaders, Standard view transform).
COLOURS = {"library": (40, 80, 230), "sequence": (230, 200, 30), "udim": (30, 200, 200), "movie": (220, 60, 200),
           "alembic": (240, 120, 20), "mesh_cache": (120, 230, 60), "volume": (255, 255, 255),
           "point_cache": (230, 40, 40), "bake": (150, 90, 240), "multires": (200, 200, 90),
           "font": (90, 230, 160), "image": (250, 160, 170), "simulation": (60, 160, 90)}
WRONG = (70, 70, 70)  # what a sequence, UDIM set or movie shows on the frames/tiles the test does not use
