"""The core and the CLI import where `bpy` cannot be imported (design principle 1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import REPO

PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class NoBpy:
        def find_spec(self, name, path=None, target=None):
            if name == "bpy" or name.startswith("bpy."):
                raise ImportError("bpy is blocked in this test")
            return None

    sys.meta_path.insert(0, NoBpy())
    try:
        import bpy  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the bpy block does not work")

    import braas_hpc.core as core
    names = [m.name for m in pkgutil.walk_packages(core.__path__, "braas_hpc.core.")]
    # The add-on toolkit's loop bridge, prompt broker and text hold no bpy either (they are tested without
    # Blender), nor do the add-ons' packages themselves (they import bpy when registered).
    for name in names + ["braas_hpc", "braas_hpc.cli", "braas_hpc.addon_kit", "braas_hpc.addon_kit.bridge",
                         "braas_hpc.addon_kit.prompting", "braas_hpc.addon_kit.text", "braas_hpc.blender",
                         "braas_hpc.blender.activity", "braas_hpc_interactive", "braas_hpc_interactive.blender",
                         "braas_hpc_interactive.blender.links"]:
        importlib.import_module(name)
    assert "bpy" not in sys.modules
    print(len(names))
    """
)


def test_core_imports_with_bpy_blocked() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 10  # every core module was really imported
