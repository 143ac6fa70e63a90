"""Golden batch scripts for every preset x CPU/GPU x still/animation.

They catch any change of a script's text; whether a site's directives are right is checked apart from
them, against a table written from docs/presets.md (test_site_directives.py). After an intended change,
`UPDATE_GOLDEN=1 python3 -m pytest tests/unit/test_golden_scripts.py` rewrites the files and fails on purpose:
read `git diff tests/golden`, then run again without it. CI (CI set) refuses UPDATE_GOLDEN.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from braas_hpc.core.jobs import JobPaths
from braas_hpc.core.presets import BUILTIN_DIR, load_preset_file
from braas_hpc.core.schedulers.base import Round
from braas_hpc.core.service import finish_script, job_script
from braas_hpc.core.spec import SubmitRequest, build_spec
from tests.helpers import REPO

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
SCENE = REPO / "examples" / "sample" / "sample.blend"
ARM_BLENDER = "/home/user/blender-4.5-arm64/blender"
CLUSTERS = sorted(p.stem for p in BUILTIN_DIR.glob("*.toml") if p.stem != "local")
# Only the devices a site has a default partition for (Polaris and Aurora have no CPU-only queue).
CASES = [(name, device, mode) for name in CLUSTERS for device in ("CPU", "GPU") for mode in ("still", "anim")
         if load_preset_file(BUILTIN_DIR / f"{name}.toml").default_partition(device == "GPU")]
FINISH_CASES = sorted({(name, device) for name, device, _ in CASES})


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
    check_golden(GOLDEN / preset.scheduler / f"{name}-{device.lower()}-{mode}.sh", script, os.environ)


# Each queue a built-in preset marks preemptible, as a still of its own kind: the requeue request in its words.
PREEMPTIBLE = [(name, part) for name in CLUSTERS
               for part, spec in load_preset_file(BUILTIN_DIR / f"{name}.toml").partitions.items() if spec.preemptible]


@pytest.mark.parametrize(("name", "partition"), PREEMPTIBLE)
def test_golden_preemptible_script(presets_dir: Path, name: str, partition: str) -> None:
    gpu = load_preset_file(BUILTIN_DIR / f"{name}.toml").partitions[partition].kind == "gpu"
    request = SubmitRequest(scene=SCENE, preset=name, frames="7", chunk=1, device="GPU" if gpu else "CPU",
                            account="PROJ-1", max_parallel=8, partition=partition)
    spec, preset = build_spec(request)
    spec = dataclasses.replace(spec, name="golden-job")
    paths = JobPaths("/cluster/work/braas-hpc", spec.name)
    script = re.sub(r"/scripts/[0-9.]+-[0-9a-f]{12}/", "/scripts/VERSION/", job_script(spec, preset, paths))
    script = re.sub(r"\b[0-9a-f]{64}\b", "SHA256", script)
    check_golden(GOLDEN / preset.scheduler / f"{name}-{partition}-still.sh", script, os.environ)


@pytest.mark.parametrize(("name", "device"), FINISH_CASES)
def test_golden_finish_script(presets_dir: Path, name: str, device: str) -> None:
    """The finish step that follows a CPU and a GPU job on each site's default partition (where it goes
    and what it asks: docs/presets.md, "The finish step at each site")."""
    request = SubmitRequest(scene=SCENE, preset=name, frames="1-100", chunk=5, device=device, account="PROJ-1",
                            max_parallel=8)
    spec, preset = build_spec(request)
    spec = dataclasses.replace(spec, name="golden-job")
    paths = JobPaths("/cluster/work/braas-hpc", spec.name)
    script = finish_script(spec, preset, paths, Round(0, len(spec.tasks)))
    script = re.sub(r"/scripts/[0-9.]+-[0-9a-f]{12}/", "/scripts/VERSION/", script)
    script = re.sub(r"\b[0-9a-f]{64}\b", "SHA256", script)  # finish_task.py's hash, checked by the job
    check_golden(GOLDEN / preset.scheduler / f"{name}-{device.lower()}-finish.sh", script, os.environ)


def check_golden(golden: Path, script: str, env: Mapping[str, str]) -> None:
    """Compare with the golden file. With UPDATE_GOLDEN: rewrite it and fail, so that a regeneration can never
    pass as a test run (it would compare the file with itself); refused outright under CI."""
    if env.get("UPDATE_GOLDEN"):
        if env.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail("UPDATE_GOLDEN is refused when CI is set: regenerate the golden scripts on your own "
                        "machine and review the diff before committing it", pytrace=False)
        before = golden.read_text() if golden.is_file() else None
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(script)
        what = "new" if before is None else "unchanged" if before == script else "changed"
        pytest.fail(f"UPDATE_GOLDEN: wrote {golden} ({what}); review the diff with git diff tests/golden, then run "
                    "again without UPDATE_GOLDEN", pytrace=False)
    assert golden.is_file(), f"no golden file {golden}: run with UPDATE_GOLDEN=1 and review it"
    assert script == golden.read_text()


def test_update_golden_rewrites_and_fails(tmp_path: Path) -> None:
    golden = tmp_path / "slurm" / "site-cpu-still.sh"
    for script, what in (("one\n", "new"), ("one\n", "unchanged"), ("two\n", "changed")):
        with pytest.raises(pytest.fail.Exception, match=rf"wrote .*\({what}\); review the diff with git diff "
                                                        r"tests/golden"):
            check_golden(golden, script, {"UPDATE_GOLDEN": "1"})
        assert golden.read_text() == script
    check_golden(golden, "two\n", {})  # without it: a plain comparison, which passes
    with pytest.raises(AssertionError):
        check_golden(golden, "three\n", {"CI": "true"})


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_update_golden_is_refused_under_ci(tmp_path: Path, ci: str) -> None:
    golden = tmp_path / "site.sh"
    golden.write_text("old\n")
    with pytest.raises(pytest.fail.Exception, match="UPDATE_GOLDEN is refused when CI is set"):
        check_golden(golden, "new\n", {"UPDATE_GOLDEN": "1", "CI": ci})
    assert golden.read_text() == "old\n"
