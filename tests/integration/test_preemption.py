"""Preemption on the test cluster (tests/testbed: PreemptType=preempt/partition_prio, PreemptMode=REQUEUE and
JobRequeue=0). A render in `qlow`, which the preset marks preemptible, is stopped half-way by a job in `qhigh`
(a higher PriorityTier on the same node). Slurm requeues the task because the job asked (--requeue; without
it Slurm would cancel it); the task runs again, skips the frames it had finished, and the job ends COMPLETED
with every frame rendered once. While it waits braas-hpc says PENDING, never FAILED, and resubmits nothing."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path

import pytest

from braas_hpc.core import registry
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.presets import load_preset, preset_from_dict
from braas_hpc.core.schedulers.sge import GridEngineScheduler
from braas_hpc.core.schedulers.slurm import SlurmScheduler
from tests import client_side
from tests.conftest import run_cli
from tests.helpers import eventually

pytestmark = pytest.mark.testbed

FRAMES = 40  # one task renders them all; a frame takes a fraction of a second, so the task is still busy
ALIVE = ("PENDING", "RUNNING")


def _preemptible_preset() -> str:
    """The testbed preset with qlow marked preemptible (the finish step stays on qcpu)."""
    base = Path(load_preset("testbed").source)
    text = base.read_text().replace('name = "testbed"', 'name = "tb-preempt"')
    text += ('\n[partitions.qcpu]\nkind = "cpu"\n\n[partitions.qgpu]\nkind = "gpu"\ncycles_device = "CUDA"\n'
             '\n[partitions.qlow]\nkind = "cpu"\npreemptible = true\n')
    (base.parent / "tb-preempt.toml").write_text(text)
    return "tb-preempt"


def _queue(remote, array: str) -> str:  # noqa: ANN001
    return remote(f"squeue -h -r -o '%i|%T|%r' -j {array}").stdout.strip()


def test_a_preempted_render_is_requeued_and_loses_no_frame(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    done = run_cli("submit", str(sample_scene), "--preset", _preemptible_preset(), "--partition", "qlow",
                   "--frames", f"1-{FRAMES}", "--chunk", str(FRAMES), "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    (array,) = job["scheduler_ids"]
    out = client_side.cluster_path(job["job_dir"]) / "out"
    job_dir = shlex.quote(job["job_dir"])
    assert "Requeue=1" in remote(f"scontrol show job {array}_1").stdout  # asked: the cluster's default is 0

    eventually(lambda: sorted(out.glob("frame_*.png")), lambda frames: bool(frames), "the task's first frame",
               timeout=300, every=0.2)
    high = remote("sbatch --parsable -p qhigh --exclusive -t 5 -o /dev/null --wrap 'sleep 2'")
    assert high.returncode == 0, high.stderr
    eventually(lambda: _queue(remote, array), lambda queue: "PENDING" in queue, "the render task requeued",
               timeout=120, every=0.2)
    # Until it runs again (Slurm holds a requeued task back for a while), what does braas-hpc say?
    said: list[tuple[str, str]] = []
    raw_query = shlex.join(SlurmScheduler().query_argv([array]))
    window = 0

    def poll() -> str:
        nonlocal window
        window += "@@queue" in remote(raw_query).stdout  # sacct still said PREEMPTED: the queue decided
        status = run_cli("status", job["job"], "--json")
        said.append((json.loads(status.stdout)["jobs"][0]["state"] if status.returncode == 0 else "?", status.stderr))
        return _queue(remote, array)

    eventually(poll, lambda queue: "RUNNING" in queue or not queue, "the requeued task to run again", timeout=300,
               every=0.5)
    assert said and all(state in ALIVE for state, _ in said), said
    assert not any("resubmitted" in err for _, err in said), said

    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    final = json.loads(waited.stdout or "{}")
    assert waited.returncode == 0 and final["state"] == "COMPLETED" and final["frames_done"] == FRAMES, (
        waited.stdout + waited.stderr)
    assert len(list(out.glob("frame_*.png"))) == FRAMES

    # Slurm's own record: the task was preempted once and then completed, in the same array (round 0 only).
    runs = remote(f"sacct -n -P -X -D -o JobID,State -j {array}").stdout.split()
    assert runs == [f"{array}_1|PREEMPTED", f"{array}_1|COMPLETED"], runs
    assert registry.get_job(job["job"]).rounds == 0
    assert remote(f"test -e {job_dir}/status/r1-task-1.json").returncode != 0

    # Every frame rendered once: the second run skipped exactly what the first had finished.
    first, second = _runs(remote(f"cat {job_dir}/log/task-1.log").stdout)
    assert 0 < len(first["rendered"]) < FRAMES, first  # stopped half-way: the test preempted a running render
    assert Counter(first["rendered"] + second["rendered"]) == Counter(range(1, FRAMES + 1)), (first, second)
    assert second["skipped"] == first["rendered"], (first, second)
    marker = json.loads(remote(f"cat {job_dir}/status/task-1.json").stdout)
    assert marker["state"] == "done" and marker["skipped"] == first["rendered"]
    print(f"FIGURES preemption frames={FRAMES} finished_before={len(first['rendered'])} status_polls={len(said)} "
          f"polls_in_sacct_window={window}")


def _runs(log: str) -> list[dict[str, list[int]]]:
    """Frames rendered and skipped by each run of the task, from its log (appended to by every run)."""
    runs: list[dict[str, list[int]]] = []
    for line in log.splitlines():
        if line.startswith("braas-hpc: device "):  # the first line of each run's render loop
            runs.append({"rendered": [], "skipped": [], "failed": []})
        elif line.startswith("BRAAS-PROGRESS ") and runs:
            fields = dict(word.split("=", 1) for word in line.split()[1:])
            runs[-1][fields["status"]].append(int(fields["frame"]))
    assert len(runs) == 2, f"the task ran {len(runs)} time(s), not twice:\n{log}"
    return runs


def test_grid_engine_reads_the_requeue_request(testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    """The directives Grid Engine gets for a queue marked preemptible, in a held job: restart y (rerunnable),
    and not for another queue."""
    preset = preset_from_dict({"name": "ge", "scheduler": "sge", "host": "h", "workdir": testbed.workdir,
                               "partitions": {"all.q": {}, "spare.q": {"preemptible": True}}}, "test")
    paths = JobPaths(f"{testbed.workdir}/preempt-{tmp_path.name}", "ge-job")
    restart = {}
    for queue in ("all.q", "spare.q"):
        spec = JobSpec(name="ge", preset="ge", scene="/s.blend", frames=(1,), chunk=1, walltime_min=5,
                       tasks=((1,),), partition=queue)
        header = "\n".join(line for line in GridEngineScheduler().directives(spec, preset, paths)
                           if not line.startswith("#$ -q "))  # the test cluster has one queue, all.q
        script = f"#!/bin/bash\n{header}\ntrue\n"
        done = remote(f'. "$SGE_ROOT/$SGE_CELL/common/settings.sh" && mkdir -p {shlex.quote(paths.log_dir)} && '
                      f"f=$(mktemp) && printf %s {shlex.quote(script)} > $f && id=$(qsub -terse -h $f) && "
                      'qstat -j "$id"; qdel "$id" >/dev/null; rm -f $f')
        assert done.returncode == 0, done.stdout + done.stderr
        restart[queue] = [line.split()[-1] for line in done.stdout.splitlines() if line.startswith("restart:")]
    assert restart == {"all.q": [], "spare.q": ["y"]}, restart
