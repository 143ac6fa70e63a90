"""Grid Engine end to end on the test cluster's Son of Grid Engine (tests/testbed/gridengine.py): the
scheduler is one file (braas_hpc/core/schedulers/sge.py) and a preset that names it; every verb works
through it. Array jobs with their finish step, status and logs, cancel, lost frames rendered again, an
interactive session."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from braas_hpc.cli_json import SCHEMAS
from braas_hpc.core.schedulers import scheduler_for
from tests.conftest import run_cli
from tests.helpers import check_frame, eventually
from tests.testbed import testbed as tb

SGE_SETTINGS = '. "$SGE_ROOT/$SGE_CELL/common/settings.sh"'


@pytest.fixture(scope="module")
def sge_preset(testbed) -> Iterator[str]:  # noqa: ANN001
    """The test cluster reached as a Grid Engine site: the `testbed` preset with `scheduler = "sge"` and
    Grid Engine's queue, written where a user's own presets go."""
    # A working directory of its own (store, scripts, jobs): these tests run beside the Slurm tests, whose
    # store checks must see only their own uploads (tests/cluster_session.py).
    workdir = f"{testbed.workdir}/tbsge"
    made = subprocess.run(tb.ssh_command(tb.Layout.from_env(), f"mkdir -p {workdir}"), capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    text = Path(testbed.preset_file).read_text(encoding="utf-8")
    for key, value in (("name", "testbed-sge"), ("title", "Test cluster through Grid Engine"), ("scheduler", "sge"),
                       ("account", ""), ("partition_cpu", "all.q"), ("partition_gpu", ""), ("workdir", workdir)):
        text = re.sub(rf'^{key} = ".*"$', f'{key} = "{value}"', text, flags=re.M)
    path = Path(testbed.preset_file).with_name("testbed-sge.toml")
    path.write_text(text, encoding="utf-8")
    yield "testbed-sge"
    path.unlink()


def _json(*args: str) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _sge(remote, command: str):  # noqa: ANN001, ANN202
    return remote(f"{SGE_SETTINGS}; {command}")


def test_an_array_job_renders_finishes_and_comes_back(sge_preset: str, remote, sample_scene: Path,  # noqa: ANN001
                                                      tmp_path: Path) -> None:
    job = _json("submit", str(sample_scene), "--preset", sge_preset, "--frames", "1-4", "--chunk", "2")
    (array,) = job["scheduler_ids"]
    assert array.isdigit() and job["finish_id"].isdigit()
    final = json.loads(run_cli("wait", job["job"], "--timeout", "300", "--json", timeout=400).stdout)
    assert final["state"] == "COMPLETED" and final["tasks"] == {"COMPLETED": 2}, final  # qacct, per task
    records = _sge(remote, f"qacct -j {array}").stdout
    assert sorted(re.findall(r"^taskid\s+(\d+)", records, flags=re.M)) == ["1", "2"]  # Grid Engine ran an array

    got = _json("download", job["job"], "--dest", str(tmp_path / "frames"))
    assert got["downloaded"] == 4
    for frame in sorted((tmp_path / "frames").iterdir()):
        check_frame(frame)
    # The finish step ran after both tasks (-hold_jid) and wrote the summary.
    status = eventually(lambda: json.loads(run_cli("status", job["job"], "--json").stdout)["jobs"][0],
                        lambda s: s["summary"], "the finish step's summary")
    assert status["state"] == "COMPLETED"
    # `logs --task 1`: braas-hpc's log of the task and Grid Engine's own output file of it.
    tails = _json("logs", job["job"], "--task", "1", "--lines", "3")["logs"]
    assert "task-1.log" in tails and any(re.fullmatch(rf"sge-{array}\.1\.out", name) for name in tails), tails


def test_cancel_ends_every_task(sge_preset: str, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", sge_preset, "--frames", "1-6", "--chunk", "2",
                "--max-parallel", "1", "--retries", "0")
    (array,) = job["scheduler_ids"]
    cancelled = run_cli("cancel", job["job"])
    assert cancelled.returncode == 0, cancelled.stderr
    eventually(lambda: _sge(remote, "qstat -xml").stdout, lambda xml: f"<JB_job_number>{array}<" not in xml,
               "the cancelled array to leave Grid Engine's queue", timeout=60)
    final = json.loads(run_cli("wait", job["job"], "--timeout", "120", "--json", timeout=200).stdout)
    assert final["state"] == "CANCELLED", final
    assert run_cli("cancel", job["job"]).returncode == 0  # a second cancel has nothing to do


def test_one_task_of_an_array_is_cancelled_alone(sge_preset: str, remote) -> None:  # noqa: ANN001
    """What a group does with a chunk another cluster took (core.group): that task's own id, cancelled."""
    sge = scheduler_for("sge")
    array = sge.parse_submit(_sge(remote, "qsub -terse -h -t 1-3 -b y -o /dev/null -e /dev/null true").stdout)
    try:
        assert remote(shlex.join(sge.cancel_argv([sge.task_id(array, 2)]))).returncode == 0
        waiting = [line.split() for line in _sge(remote, "qstat -g d").stdout.splitlines()]
        assert sorted(fields[-1] for fields in waiting if fields[:1] == [array]) == ["1", "3"], waiting
    finally:
        _sge(remote, f"qdel {array}")


def test_a_lost_frame_is_rendered_again(sge_preset: str, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", sge_preset, "--frames", "1-2", "--chunk", "2")
    assert run_cli("wait", job["job"], "--timeout", "300", timeout=400).returncode == 0
    frame = shlex.quote(f"{job['job_dir']}/out/frame_000002.png")
    assert remote(f"rm {frame}").returncode == 0
    status = run_cli("status", job["job"], "--json")
    assert "1 lost frame(s) resubmitted as round 1" in status.stderr, status.stderr
    final = json.loads(run_cli("wait", job["job"], "--timeout", "300", "--json", timeout=400).stdout)
    assert final["state"] == "COMPLETED" and len(final["scheduler_ids"]) == 2, final  # a second qsub
    assert remote(f"test -s {frame}").returncode == 0


def test_an_interactive_session_runs_a_command_in_its_job(sge_preset: str) -> None:
    started = run_cli("interactive", "start", sge_preset, "--walltime", "10", "--json", timeout=300)
    assert started.returncode == 0, started.stderr
    shown = json.loads(started.stdout)
    jsonschema.validate(shown, SCHEMAS["interactive start"])  # the documented --json contract (docs/json.md)
    session = shown["session"]
    try:
        ran = run_cli("interactive", "run", session, "--", "sh", "-c", 'echo "job=$BRAAS_JOB_ID"', timeout=300)
        assert ran.returncode == 0, ran.stderr
        (state,) = [s for s in _json("interactive", "status")["sessions"] if s["session"] == session]
        assert re.search(r"^job=\d+$", ran.stdout, flags=re.M) and f"job={state['job']}" in ran.stdout
    finally:
        stopped = run_cli("interactive", "stop", session, timeout=300)
    assert stopped.returncode == 0, stopped.stderr


def test_a_lost_task_is_rendered_again_by_the_cluster_with_no_client(sge_preset: str, remote,  # noqa: ANN001
                                                                    sample_scene: Path) -> None:
    """The finish step's own recovery (core.rounds) through Grid Engine: task 3 deleted while it waits,
    and no braas-hpc command after the submit; the finish step qsubs frames 5-6 as round 1."""
    job = _json("submit", str(sample_scene), "--preset", sge_preset, "--frames", "1-6", "--chunk", "2",
                "--max-parallel", "1")
    (array,) = job["scheduler_ids"]
    assert _sge(remote, f"qdel {array} -t 3").returncode == 0
    job_dir = shlex.quote(job["job_dir"])
    wanted = {f"frame_{n:06d}.png" for n in range(1, 7)}
    eventually(lambda: set(remote(f"ls {job_dir}/out").stdout.split()), lambda got: got >= wanted, "every frame",
               timeout=600)
    log = eventually(lambda: remote(f"cat {job_dir}/log/finish.log").stdout,
                     lambda text: "round 1 submitted for frames [5, 6]" in text, "the finish step's recovery")
    marker = json.loads(remote(f"cat {job_dir}/status/r1-task-1.json").stdout)
    assert marker["frames"] == [5, 6] and marker["rendered"] == [5, 6], log
    assert remote(f"test -e {job_dir}/status/r2-task-1.json").returncode != 0
