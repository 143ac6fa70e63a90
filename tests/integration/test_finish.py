"""The finish step on real Slurm (a job with a cancelled task), and embedded Python held back without opt-in."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import run_cli
from tests.helpers import cluster_file_when_written, eventually, partition_closed
from tests.testbed import testbed as tb


def _json(*args: str) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _fetch(path: str) -> bytes:
    done = subprocess.run(tb.ssh_command(tb.Layout.from_env(), f"cat {path}"), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_summary_of_a_job_with_a_cancelled_task(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    # Task 3 (frames 5 and 6) is cancelled the moment the partition opens, behind the throttle it never
    # runs, whatever the scheduler's pace. When the cancel meets the array's first start (2 runs in 3),
    # Slurm's accounting keeps task 2 as the array's own id without its index and task 1 not at all;
    # the markers then count the tasks.
    with partition_closed(testbed.slurm_conf):
        job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-6", "--chunk", "2",
                    "--max-parallel", "1", "--retries", "0")  # no automatic recovery: the summary is the subject
    array = job["scheduler_ids"][0]
    assert job["finish_id"].isdigit() and job["finish_id"] != array
    killed = subprocess.run(["scancel", f"{array}_3"], env={**os.environ, "SLURM_CONF": str(testbed.slurm_conf)},
                            capture_output=True, timeout=60)
    assert killed.returncode == 0, killed.stderr
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    final = json.loads(waited.stdout)
    # sacct keeps no line for an array task cancelled while pending; it wrote no marker: it never started.
    assert waited.returncode == 1 and final["state"] == "CANCELLED" and final["missing"] == "5-6", final
    assert final["tasks"] == {"COMPLETED": 2, "CANCELLED": 1}, final

    job_dir = job["job_dir"]
    summary = json.loads(cluster_file_when_written(remote, f"{job_dir}/summary.json"))
    assert summary["frames_total"] == 6 and summary["frames_ok"] == 4 and summary["missing"] == [5, 6]
    assert set(summary["timings"]) == {"1", "2", "3", "4"} and summary["seconds_per_frame"]["mean"] > 0
    assert summary["tasks"] == 2 and summary["tasks_failed"] == [] and summary["gpu_hours"] == 0
    assert summary["core_hours"] > 0 and summary["last_frame"] == "frame_000004.png"
    assert summary["thumbnail"] == "thumb.jpg"
    with Image.open(io.BytesIO(_fetch(f"{job_dir}/thumb.jpg"))) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (192, 108)  # the frame is smaller than 256 px
        assert len(thumb.convert("RGB").getcolors(maxcolors=192 * 108) or []) > 20

    # The finish job ran once every task had ended, and it is not one of the job's render tasks.
    # summary.json is written before the finish job exits: slurmdbd records its end a moment later.
    rows = eventually(
        lambda: remote(f"sacct -n -P -X -o JobID,State,Start,End -j {array},{job['finish_id']}").stdout.splitlines(),
        lambda rows: any(r.startswith(f"{job['finish_id']}|") and r.split("|")[3] != "Unknown" for r in rows),
        "the finish job's end in sacct")
    # The array's tasks: "<array>_N", or the array's own id for the task accounting kept without its index.
    ends = [r.split("|")[3] for r in rows if r.split("|")[0].split("_")[0] == array and r.split("|")[3] != "Unknown"]
    finish = next(r.split("|") for r in rows if r.startswith(f"{job['finish_id']}|"))
    assert finish[1] == "COMPLETED" and finish[2] >= max(ends), rows
    status = json.loads(run_cli("status", job["job"], "--json").stdout)["jobs"][0]
    assert status["summary"] is True and job["finish_id"] not in status["scheduler_ids"]
    assert status["tasks"] == {"COMPLETED": 2, "CANCELLED": 1}  # the array's tasks only, not the finish job
    assert remote(f"cat {job_dir}/finish.txt").stdout.strip() == f"0 {job['finish_id']}"


def test_the_finish_of_a_gpu_job_runs_in_its_partition_with_one_gpu(testbed, remote,  # noqa: ANN001
                                                                     sample_scene: Path) -> None:
    """The testbed preset names no finish partition: the finish step of a job in its GPU partition (qgpu)
    stays there with the smallest request a GPU partition surely takes (one GPU, one core), not in the
    CPU partition a GPU-only project may not have. The render task fails here (no GPU hardware), and the
    finish step still runs after it (afterany) and writes the summary."""
    planned = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1", "--gpu", "--dry-run")
    header = [line for line in planned["finish_script"].splitlines() if line.startswith("#SBATCH ")]
    assert "#SBATCH --partition=qgpu" in header and "#SBATCH --gpus=1" in header, header
    assert "#SBATCH --cpus-per-task=1" in header and not [h for h in header if "qcpu" in h], header

    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1", "--gpu", "--retries", "0",
                "--pack", "dir")
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    assert waited.returncode == 1 and json.loads(waited.stdout)["state"] == "FAILED", waited.stdout
    summary = json.loads(cluster_file_when_written(remote, f"{job['job_dir']}/summary.json"))
    assert summary["frames_total"] == 1 and summary["missing"] == [1]
    row = eventually(
        lambda: remote(f"sacct -n -P -X -o State,Partition,AllocTRES%200 -j {job['finish_id']}").stdout.strip(),
        # slurmdbd may hold the ended record a moment before its partition (seen once on a fresh cluster)
        lambda row: row.startswith("COMPLETED|") and bool(row.split("|")[1]), "the finish job's record in sacct")
    state, partition, tres = row.split("|")
    assert partition == "qgpu", row
    allocated = dict(item.split("=", 1) for item in tres.split(","))
    assert allocated["cpu"] == "1" and allocated["gres/gpu"] == "1", row


_DRIVER_SCENE = r"""
import os
import sys
import bpy
canary, out = sys.argv[-2], sys.argv[-1]
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 1
scene.render.resolution_x, scene.render.resolution_y = 64, 36
driver = bpy.data.objects["Cube"].driver_add("location", 0).driver
driver.type = "SCRIPTED"
driver.expression = f"len(open({canary!r}, 'w').write('ran') * 'x') * 0"
bpy.ops.wm.save_as_mainfile(filepath=out)
sys.stdout.flush()
os._exit(0)  # the bpy module can hang on exit after a driver error; the file is saved
"""


def test_python_driver_runs_only_on_opt_in(testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    # The canary's directory does not exist yet, so building the scene here cannot create it.
    canary_dir = f"{testbed.workdir}/canary-{secrets.token_hex(4)}"
    scene = tmp_path / "driver.blend"
    made = subprocess.run([sys.executable, "-c", _DRIVER_SCENE, f"{canary_dir}/ran", str(scene)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0 and scene.is_file(), made.stderr
    assert remote(f"mkdir -p {canary_dir}").returncode == 0

    # --pack dir: the scene goes as it is (the bpy module used for packing here can hang on this scene).
    held = _json("submit", str(scene), "--preset", "testbed", "--frames", "1", "--pack", "dir")
    assert run_cli("wait", held["job"], "--timeout", "300", timeout=400).returncode == 0  # it rendered
    assert remote(f"test -e {canary_dir}/ran").returncode == 1  # ... without running the driver

    opted = _json("submit", str(scene), "--preset", "testbed", "--frames", "1", "--allow-scripts", "--pack", "dir")
    assert run_cli("wait", opted["job"], "--timeout", "300", timeout=400).returncode == 0
    assert remote(f"cat {canary_dir}/ran").stdout == "ran"  # the driver is real and does run when allowed
