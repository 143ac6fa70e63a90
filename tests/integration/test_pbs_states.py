"""PBS job states read end to end: qstat's JSON from the PBS Pro stand-in (tests/testbed/pbs) over ssh,
through the monitor, as `braas-hpc status` reports them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from braas_hpc.core.presets import BUILTIN_DIR, load_preset, load_preset_file
from tests.conftest import run_cli
from tests.helpers import eventually, make_sample
from tests.retarget import retarget, to_toml

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample(tmp_path_factory.mktemp("pbs-states-scene"))


def test_a_qdel_by_someone_else_ends_every_subjob_cancelled(testbed, remote, scene: Path) -> None:  # noqa: ANN001
    """An admin's qdel of an array with running and queued subjobs: the queued ones never ran (no
    Exit_status), the running ones were killed (271). The job ends CANCELLED, and so does every subjob
    but those whose frames are on disk: none counted COMPLETED for frames it never rendered, none left
    unknown."""
    base = load_preset("testbed")
    preset = retarget(load_preset_file(BUILTIN_DIR / "polaris.toml"), base)
    (Path(base.source).parent / f"{preset.name}.toml").write_text(to_toml(preset))
    # --retries 0: the finish step would otherwise render the lost frames again (the cluster's recovery)
    # and the job end COMPLETED; how the qdel'd subjobs are read is the subject here.
    done = run_cli("submit", str(scene), "--preset", preset.name, "--partition", "debug", "--frames", "1-6",
                   "--retries", "0", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    array_id = job["scheduler_ids"][0]
    eventually(lambda: remote(f"qstat -t -f -F json {shlex.quote(array_id)}").stdout,
               lambda out: '"job_state":"R"' in out and '"job_state":"Q"' in out, "a running and a queued subjob")
    assert remote(f"qdel {shlex.quote(array_id)}").returncode == 0  # not `braas-hpc cancel`: the job stays polled

    def status() -> dict[str, object]:
        got = run_cli("status", job["job"], "--json", "--no-recover")
        assert got.returncode == 0, got.stderr
        return json.loads(got.stdout)["jobs"][0]

    final = eventually(status, lambda s: s["state"] != "RUNNING" and s["state"] != "PENDING", "the job's end")
    tasks = final["tasks"]
    assert final["state"] == "CANCELLED" and isinstance(tasks, dict), final
    assert set(tasks) <= {"CANCELLED", "COMPLETED"} and tasks["CANCELLED"] >= 1, final
    assert tasks.get("COMPLETED", 0) <= final["frames_done"], final  # a COMPLETED task rendered a frame at least
