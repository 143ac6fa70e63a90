"""Golden batch scripts for every preset x CPU/GPU x still/animation.

Each golden file was read against the site's documentation when it was written (see docs/presets.md).
After an intended change, regenerate with `UPDATE_GOLDEN=1 python3 -m pytest tests/unit/test_golden_scripts.py`
and read the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from braas_hpc.core.jobs import JobPaths
from braas_hpc.core.presets import BUILTIN_DIR, load_preset_file
from braas_hpc.core.service import job_script
from braas_hpc.core.spec import SubmitRequest, build_spec
from tests.helpers import REPO

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
SCENE = REPO / "examples" / "sample" / "sample.blend"
ARM_BLENDER = "/home/user/blender-4.5-arm64/blender"
CLUSTERS = sorted(p.stem for p in BUILTIN_DIR.glob("*.toml") if p.stem != "local")
# Only the devices a site has a default partition for (Polaris and Aurora have no CPU-only queue).
CASES = [(name, device, mode) for name in CLUSTERS for device in ("CPU", "GPU") for mode in ("still", "anim")
         if load_preset_file(BUILTIN_DIR / f"{name}.toml").default_partition(device == "GPU")]


@pytest.fixture
def presets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Built-in presets as a user would use them: aarch64 sites get a user-built Blender path."""
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(tmp_path))
    user = tmp_path / "presets"
    user.mkdir()
    for path in BUILTIN_DIR.glob("*.toml"):
        text = path.read_text()
        if re.search(r'^blender = ""', text, re.M) and path.stem != "local":
            (user / path.name).write_text(re.sub(r'^blender = ""', f'blender = "{ARM_BLENDER}"', text, flags=re.M))
    return user


@pytest.mark.parametrize(("name", "device", "mode"), CASES)
def test_golden_script(presets_dir: Path, name: str, device: str, mode: str) -> None:
    frames, chunk = ("7", 1) if mode == "still" else ("1-100", 5)
    request = SubmitRequest(scene=SCENE, preset=name, frames=frames, chunk=chunk, device=device,
                            account="PROJ-1", max_parallel=8)
    spec, preset = build_spec(request)
    spec = dataclasses.replace(spec, name="golden-job")
    paths = JobPaths("/cluster/work/braas-hpc", spec.name)
    # The scripts directory carries a hash of render_task.py; the golden files need not change with it.
    script = re.sub(r"/scripts/[0-9.]+-[0-9a-f]{12}/", "/scripts/VERSION/", job_script(spec, preset, paths))
    script = re.sub(r"\b[0-9a-f]{64}\b", "SHA256", script)  # render_task.py's hash, checked by the job
    golden = GOLDEN / preset.scheduler / f"{name}-{device.lower()}-{mode}.sh"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(script)
    assert golden.is_file(), f"no golden file {golden}: run with UPDATE_GOLDEN=1 and review it"
    assert script == golden.read_text()
