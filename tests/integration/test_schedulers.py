"""Schedulers on the real test cluster: every site's Slurm script shape, cancel, resubmit."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from braas_hpc.core import registry
from braas_hpc.core.presets import BUILTIN_DIR, load_preset, load_preset_file
from braas_hpc.core.schedulers import scheduler_for
from tests.conftest import REPO, run_cli
from tests.helpers import check_frame, make_sample
from tests.retarget import retarget, to_toml

SLURM_SITES = sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")
                     if load_preset_file(p).scheduler == "slurm")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample(tmp_path_factory.mktemp("sched-scene"))


def _sacct(remote, job_id: str, fields: str) -> list[str]:  # noqa: ANN001
    done = remote(f"sacct -n -P -X -o {fields} -j {shlex.quote(job_id)}")
    return [line for line in done.stdout.splitlines() if line]


def test_every_site_script_runs_on_real_slurm(testbed, remote, scene: Path) -> None:  # noqa: ANN001
    """Each Slurm site's CPU and GPU script, retargeted to the testbed, is accepted and run by Slurm."""
    base = load_preset("testbed")
    users = Path(base.source).parent
    wanted = []
    for site in SLURM_SITES:
        preset = retarget(load_preset_file(BUILTIN_DIR / f"{site}.toml"), base)
        (users / f"{preset.name}.toml").write_text(to_toml(preset))
        wanted += [(site, gpu, preset.name) for gpu in (False, True) if preset.default_partition(gpu)]
    assert len(wanted) >= len(SLURM_SITES)
    # All at once, as several users of one cluster would: the submissions, then the waits.
    # --pack dir: the script's shape is the subject, not packing (which starts Blender per submit).
    # A GPU task fails here (no GPU): --retries 0, or recovery would resubmit it round after round.
    submits = [_cli_process("submit", str(scene), "--preset", name, "--frames", "2", "--json", "--pack", "dir",
                            *(["--gpu", "--retries", "0"] if gpu else [])) for _, gpu, name in wanted]
    submitted = []
    for (site, gpu, _), proc in zip(wanted, submits, strict=True):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{site} gpu={gpu}: {err}"
        submitted.append((site, gpu, json.loads(out)))
    waits = [_cli_process("wait", job["job"], "--timeout", "600", "--json") for _, _, job in submitted]
    for (site, gpu, job), proc in zip(submitted, waits, strict=True):
        out, err = proc.communicate(timeout=700)
        final = json.loads(out)
        job_dir = shlex.quote(job["job_dir"])
        if not gpu:
            assert proc.returncode == 0 and final["state"] == "COMPLETED", f"{site}: {final} {err}"
            continue
        # No GPU here: the render task must refuse loudly instead of rendering on the CPU.
        assert proc.returncode == 1 and final["state"] == "FAILED", f"{site} gpu: {final}"
        marker = json.loads(remote(f"cat {job_dir}/status/task-1.json").stdout)
        assert marker["exit_code"] == 4 and "found none" in marker["error"], marker
        tres = " ".join(_sacct(remote, job["scheduler_ids"][0], "ReqTRES%120"))
        preset = load_preset(f"tb-{site}")
        if scheduler_for(preset.scheduler).gpu_request(preset) in ("gpus", "gres"):
            assert "gres/gpu=1" in tres, f"{site}: Slurm did not get the GPU request: {tres}"


def _cli_process(*args: str) -> subprocess.Popen[str]:
    """The real command line, started and left running (run_cli waits for it)."""
    return subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", *args], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cancel_removes_running_and_pending_tasks(testbed, remote, scene: Path) -> None:  # noqa: ANN001
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1-12", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    job_id = job["scheduler_ids"][0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some tasks run while others still wait
        states = remote(f"squeue -h -r -j {job_id} -o %T").stdout.split()
        if "RUNNING" in states and "PENDING" in states:
            break
        time.sleep(0.5)
    assert "RUNNING" in states and "PENDING" in states, states

    cancelled = run_cli("cancel", job["job"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancelled"] == [job_id]
    deadline = time.monotonic() + 60
    while remote(f"squeue -h -j {job_id}").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert remote(f"squeue -h -j {job_id}").stdout.strip() == ""
    assert json.loads(run_cli("status", job["job"], "--json").stdout)["jobs"][0]["state"] == "CANCELLED"
    again = run_cli("cancel", job["job"])
    assert again.returncode == 0 and "already ended" in again.stdout


def test_one_task_of_an_array_is_cancelled_alone(testbed, remote) -> None:  # noqa: ANN001
    """What a group does with a chunk another cluster took (core.group): that task's own id, cancelled."""
    slurm = scheduler_for("slurm")
    array = slurm.parse_submit(remote("sbatch --parsable --hold --array=1-3 --output=/dev/null --wrap true").stdout)
    try:
        assert remote(shlex.join(slurm.cancel_argv([slurm.task_id(array, 2)]))).returncode == 0
        left = remote(f"squeue -h -r -j {array} -o %i").stdout.split()
        assert sorted(left) == [f"{array}_1", f"{array}_3"], left
    finally:
        remote(f"scancel {array}")


def test_a_resubmit_looks_its_job_up_once(testbed, remote, scene: Path) -> None:  # noqa: ANN001
    """The panel's and the CLI's Resubmit, in this process: the registry, the preset and the scheduler are
    resolved once (core.context) and handed down, not looked up again by name in each step."""
    import asyncio
    import sys as _sys
    from collections import Counter

    from braas_hpc.core import presets, recovery, schedulers
    from braas_hpc.core.context import job_context
    from braas_hpc.core.transport import pool

    job = json.loads(run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1-2", "--json").stdout)
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
    assert remote(f"rm {shlex.quote(job['job_dir'])}/out/frame_000002.png").returncode == 0
    calls: Counter[str] = Counter()

    async def resubmit():  # noqa: ANN202
        try:
            return await recovery.resubmit_missing(job_context(job["job"]))
        finally:
            await pool.close_all()

    with pytest.MonkeyPatch.context() as patch:  # every binding of the three functions counts its calls
        for original in (registry.get_job, presets.load_preset, schedulers.scheduler_for):
            def counted(*args, _f=original, **kwargs):  # noqa: ANN002, ANN003, ANN202
                calls[_f.__name__] += 1
                return _f(*args, **kwargs)
            for module in [m for name, m in _sys.modules.items() if name.startswith("braas_hpc")]:
                if getattr(module, original.__name__, None) is original:
                    patch.setattr(module, original.__name__, counted)
        result, _plan = asyncio.run(resubmit())
    assert result.frames == "2"
    assert calls == {"get_job": 1, "load_preset": 1, "scheduler_for": 1}, calls
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0


def test_resubmit_sends_only_missing_frames(testbed, remote, scene: Path, tmp_path: Path) -> None:  # noqa: ANN001
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1-4", "--chunk", "2", "--json")
    job = json.loads(done.stdout)
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
    job_dir = shlex.quote(job["job_dir"])
    # Lose two frames (a purge, a full disk): the job is no longer complete.
    assert remote(f"rm {job_dir}/out/frame_000002.png {job_dir}/out/frame_000003.png").returncode == 0
    status = json.loads(run_cli("status", job["job"], "--json", "--no-recover").stdout)["jobs"][0]
    assert status["missing"] == "2-3" and status["state"] == "FAILED"  # the frames decide, not the queue

    early = run_cli("resubmit", job["job"], "--json")
    assert early.returncode == 0, early.stderr
    again = json.loads(early.stdout)
    assert again["frames"] == "2-3" and again["tasks"] == 1
    # Each scheduler id with its number of tasks: a partial accounting answer is not the whole array.
    assert registry.get_job(job["job"]).id_tasks == {job["scheduler_ids"][0]: 2, again["scheduler_ids"][0]: 1}
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
    marker = json.loads(remote(f"cat {job_dir}/status/r1-task-1.json").stdout)
    assert marker["frames"] == [2, 3] and marker["rendered"] == [2, 3]
    first = json.loads(remote(f"cat {job_dir}/status/task-1.json").stdout)
    assert first["frames"] == [1, 2]  # round 0's markers stay as they were
    # `logs --task 1`: that task's logs of both rounds, Slurm's and ours, in one call.
    shown = run_cli("logs", job["job"], "--task", "1", "--lines", "5", "--json")
    assert shown.returncode == 0, shown.stderr
    tails = json.loads(shown.stdout)["logs"]
    assert {"task-1.log", "r1-task-1.log"} <= set(tails) and not any("task-2" in name for name in tails), tails
    assert "BRAAS-PROGRESS task=1 frame=3" in tails["r1-task-1.log"] and len(tails["task-1.log"].splitlines()) == 5
    text = run_cli("logs", job["job"]).stdout
    assert "resubmissions: 1" in text and "==== task-2.log (last 60 lines) ====" in text
    got = run_cli("download", job["job"], "--dest", str(tmp_path / "frames"), "--json")
    assert json.loads(got.stdout)["downloaded"] == 4
    for frame in (tmp_path / "frames").iterdir():
        check_frame(frame)


def _install_site(site: str) -> str:
    base = load_preset("testbed")
    preset = retarget(load_preset_file(BUILTIN_DIR / f"{site}.toml"), base)
    (Path(base.source).parent / f"{preset.name}.toml").write_text(to_toml(preset))
    return preset.name


def test_pbs_site_end_to_end_through_the_stand_in(testbed, remote, scene: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Polaris's real #PBS script on the PBS Pro stand-in (tests/testbed/pbs): submit, qstat JSON, download."""
    name = _install_site("polaris")
    # Polaris has no CPU-only queue; a CPU render on a GPU queue is allowed (the GPUs idle).
    done = run_cli("submit", str(scene), "--preset", name, "--partition", "debug", "--frames", "1-3", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["scheduler_ids"][0].endswith("[].pbs-standin")
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    final = json.loads(waited.stdout)
    assert waited.returncode == 0 and final["state"] == "COMPLETED" and final["tasks"] == {"COMPLETED": 3}, final
    got = run_cli("download", job["job"], "--dest", str(tmp_path / "frames"), "--json")
    assert json.loads(got.stdout)["downloaded"] == 3
    for frame in (tmp_path / "frames").iterdir():
        check_frame(frame)
    assert remote(f"rm {shlex.quote(job['job_dir'])}/out/frame_000003.png").returncode == 0
    refused = run_cli("resubmit", job["job"], "--exclude", "x3000c0s1b0n0")  # PBS has no node exclusion
    assert refused.returncode == 2 and "pbs cannot keep a job off given nodes" in refused.stderr, refused.stderr


def test_pbs_cancel_removes_every_subjob(testbed, remote, scene: Path) -> None:  # noqa: ANN001
    name = _install_site("polaris")
    done = run_cli("submit", str(scene), "--preset", name, "--partition", "debug", "--frames", "1-10", "--json")
    job = json.loads(done.stdout)
    array_id = job["scheduler_ids"][0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        letters = remote(f"qstat -t -f -F json {shlex.quote(array_id)} | grep -o '\"job_state\":\"[A-Z]\"'").stdout
        if '"R"' in letters and '"Q"' in letters:
            break
        time.sleep(0.5)
    assert '"R"' in letters and '"Q"' in letters, letters
    assert run_cli("cancel", job["job"]).returncode == 0
    slurm_id = array_id.split("[")[0]
    deadline = time.monotonic() + 60
    while remote(f"squeue -h -j {slurm_id}").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert remote(f"squeue -h -j {slurm_id}").stdout.strip() == ""
