"""Submission through the cluster's submission helper, and without it: a login node whose Python cannot
run the helper (none there, or a preset that says not to use it) still gets the job, one remote command
at a time, and the job renders the same frames."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from braas_hpc.core.presets import load_preset
from tests.conftest import run_cli
from tests.retarget import to_toml


@pytest.mark.parametrize("login_python", ["/nonexistent/python3", ""], ids=["no-python-there", "turned-off"])
def test_a_login_node_without_the_helper_gets_the_job_step_by_step(testbed, sample_scene: Path, tmp_path: Path,  # noqa: ANN001
                                                                   login_python: str) -> None:
    base = load_preset("testbed")
    name = f"tb-stepwise-{'off' if not login_python else 'nopy'}"
    preset = dataclasses.replace(base, name=name, login_python=login_python)
    (Path(base.source).parent / f"{name}.toml").write_text(to_toml(preset))
    done = run_cli("submit", str(sample_scene), "--preset", name, "--frames", "1-2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["scheduler_ids"] and result["finish_id"]
    assert result["uploaded_files"] + result["skipped_files"] >= 1
    waited = run_cli("wait", result["job"], "--timeout", "600")
    assert waited.returncode == 0, waited.stderr + waited.stdout
    fetched = run_cli("download", result["job"], "--dest", str(tmp_path / "frames"), "--json")
    assert fetched.returncode == 0, fetched.stderr
    assert len(list((tmp_path / "frames").glob("*.png"))) == 2
