"""Automatic recovery on the test cluster: frames lost to a cancelled task or vanished from disk come
back without the user asking, finished frames are not rendered again, the retry limit holds, and a
node that kills tasks is excluded from the next round, finish step included (the testbed's two-node
partition `qpair`; its default CPU partition `qcpu` has one node)."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from braas_hpc.core import registry
from braas_hpc.core.presets import load_preset
from tests.conftest import run_cli
from tests.helpers import check_frame, eventually, partition_closed


def _json(*args: str) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_cancelled_task_is_rendered_again_by_itself(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-6", "--chunk", "2",
                "--max-parallel", "1")
    array = job["scheduler_ids"][0]
    assert remote(f"scancel {array}_3").returncode == 0  # task 3 (frames 5, 6) never runs
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    final = json.loads(waited.stdout)
    assert waited.returncode == 0 and final["state"] == "COMPLETED" and final["frames_done"] == 6, waited.stderr
    job_dir = shlex.quote(job["job_dir"])
    marker = json.loads(remote(f"cat {job_dir}/status/r1-task-1.json").stdout)
    assert marker["frames"] == [5, 6] and marker["rendered"] == [5, 6]  # only the lost frames
    assert remote(f"test -e {job_dir}/status/r2-task-1.json").returncode != 0  # one round was enough


def _sacct_row(remote, job_id: str, timeout: float = 120) -> list[str]:  # noqa: ANN001
    """JobID|NodeList|State of a plain job once the accounting has it ended."""
    deadline = time.monotonic() + timeout
    row: list[str] = []
    while time.monotonic() < deadline:
        rows = remote(f"sacct -n -P -X -o JobID,NodeList,State -j {shlex.quote(job_id)}").stdout.splitlines()
        row = next((r.split("|") for r in rows if r.startswith(f"{job_id}|")), [])
        if row and row[2] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            return row
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {row}")


def _finish_ids(remote, job_dir: str) -> dict[int, str]:  # noqa: ANN001
    lines = remote(f"cat {shlex.quote(job_dir)}/finish.txt").stdout.split("\n")
    return {int(r): i for r, i in (line.split() for line in lines if line.strip())}


def test_resubmit_can_keep_off_a_node_and_the_finish_step_still_runs(  # noqa: ANN001
        testbed, remote, sample_scene: Path) -> None:
    # A site whose finish steps for qpair go to qcpu (localhost only): keeping the finish step off
    # localhost there leaves it no node.
    base = Path(load_preset("testbed").source)
    preset = base.read_text().replace('name = "testbed"', 'name = "tb-finish-qcpu"')
    tables = ('\n[partitions.qpair]\nfinish = "qcpu"\n\n[partitions.qcpu]\n\n'
              '[partitions.qgpu]\nkind = "gpu"\ncycles_device = "CUDA"\ngpus_per_task = 1\n')
    (base.parent / "tb-finish-qcpu.toml").write_text(preset + tables)
    with partition_closed(testbed.slurm_conf, "qpair"):  # queued, whatever the scheduler's pace
        job = _json("submit", str(sample_scene), "--preset", "tb-finish-qcpu", "--partition", "qpair",
                    "--frames", "1-2", "--retries", "0")
        early = run_cli("resubmit", job["job"])
    assert early.returncode == 2 and "is still PENDING: wait for it" in early.stderr, early.stderr
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
    whole = run_cli("resubmit", job["job"])
    assert whole.returncode == 2 and "has every frame; nothing to resubmit" in whole.stderr, whole.stderr
    assert remote(f"rm {shlex.quote(job['job_dir'])}/out/frame_000002.png").returncode == 0
    bad = run_cli("resubmit", job["job"], "--exclude", "node2;reboot")
    assert bad.returncode == 2 and "not a node name: node2;reboot" in bad.stderr, bad.stderr
    again = _json("resubmit", job["job"], "--exclude", "localhost")
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    assert waited.returncode == 0 and json.loads(waited.stdout)["frames_done"] == 2, waited.stdout + waited.stderr
    (round_id,) = again["scheduler_ids"]
    rows = remote(f"sacct -n -P -X -o JobID,NodeList,State -j {round_id}").stdout.splitlines()
    assert rows and all(r.split("|")[1] == "node2" for r in rows), rows  # the round kept off localhost
    # Its finish step asked to keep off localhost too; qcpu has no other node, so Slurm refused that
    # ("Requested node configuration is not available") and it went without: summary over lost.
    finish = _sacct_row(remote, _finish_ids(remote, job["job_dir"])[1])
    assert finish[1:] == ["localhost", "COMPLETED"], finish
    summary = json.loads(remote(f"cat {shlex.quote(job['job_dir'])}/summary.json").stdout)
    assert summary["frames_ok"] == 2 and summary["missing"] == []


def test_frames_lost_later_come_back_until_the_retry_limit(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-3", "--retries", "1")
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
    frame = shlex.quote(f"{job['job_dir']}/out/frame_000002.png")
    assert remote(f"rm {frame}").returncode == 0
    status = run_cli("status", job["job"], "--json")
    (current,) = json.loads(status.stdout)["jobs"]
    assert "1 lost frame(s) resubmitted as round 1" in status.stderr
    assert current["state"] in ("PENDING", "RUNNING", "UNKNOWN", "COMPLETED")  # UNKNOWN: not in sacct yet
    assert run_cli("wait", job["job"], "--timeout", "600", timeout=700).returncode == 0
    assert remote(f"test -s {frame}").returncode == 0

    assert remote(f"rm {frame}").returncode == 0  # lost again: the one retry is used up
    (current,) = json.loads(run_cli("status", job["job"], "--json").stdout)["jobs"]
    assert current["state"] == "FAILED" and current["missing"] == "2"
    waited = run_cli("wait", job["job"], "--timeout", "60", timeout=120)
    assert waited.returncode == 1 and "missing frames: 2" in waited.stdout


def test_a_task_killed_mid_render_keeps_its_finished_frames(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    """What a preemptible queue does to a task: stopped half-way. Its finished frames stay, only the
    rest is rendered again."""
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-40", "--chunk", "40")
    out = shlex.quote(f"{job['job_dir']}/out")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and remote(f"test -s {out}/frame_000002.png").returncode != 0:
        time.sleep(0.3)
    assert remote(f"scancel {job['scheduler_ids'][0]}").returncode == 0  # preempted after a few frames
    # Once the task is gone from the queue, what is in out/ is what it finished.
    eventually(lambda: remote(f"squeue -h -j {job['scheduler_ids'][0]}").stdout.strip(), lambda queued: not queued,
               "the cancelled task to leave the queue", timeout=60)
    kept = set(remote(f"ls {out}").stdout.split())
    assert "frame_000001.png" in kept and "frame_000040.png" not in kept
    waited = run_cli("wait", job["job"], "--timeout", "600", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    marker = json.loads(remote(f"cat {shlex.quote(job['job_dir'])}/status/r1-task-1.json").stdout)
    assert not set(marker["frames"]) & {int(n[6:12]) for n in kept if n.startswith("frame_")}
    assert sorted(marker["rendered"]) == marker["frames"] and 40 in marker["frames"]


# Blender on a node that kills render tasks: on the node whose host name is braas-node (Slurm's
# `localhost`) a render task is SIGKILLed as soon as its marker says "running" (a few seconds after
# start: the task has begun, as a node failure or an OOM killer would find it); everywhere else, and for
# any other Blender run (the finish step), it is the cluster's Blender unchanged.
_NODE_KILLS_TASKS = """\
#!/bin/sh
real={real}
case "$(hostname)" in braas-node) ;; *) exec "$real" "$@" ;; esac
case " $* " in *"/render_task.py "*) ;; *) exec "$real" "$@" ;; esac
job_dir= task= prefix= prev=
for arg in "$@"; do
    case "$prev" in
        --job-dir) job_dir=$arg ;;
        --task) task=$arg ;;
        --marker-prefix) prefix=$arg ;;
    esac
    prev=$arg
done
marker="$job_dir/status/${{prefix}}task-$task.json"
"$real" "$@" &
pid=$!
waited=0
while [ ! -s "$marker" ] && [ "$waited" -lt 1200 ] && kill -0 "$pid" 2>/dev/null; do
    sleep 0.05
    waited=$((waited + 1))
done
echo "test wrapper: killing render task $task on $(hostname) after $waited polls" >&2
kill -KILL "$pid"
wait "$pid"
"""


def _markers(remote, job_dir: str) -> dict[str, dict]:  # noqa: ANN001
    """Every marker of the job by file name (task-K.json for round 0, rR-task-K.json for round R)."""
    done = remote(f"cd {shlex.quote(job_dir)}/status && for f in *.json; do printf '%s\\0' \"$f\"; cat \"$f\"; "
                  "printf '\\0'; done")
    parts = done.stdout.split("\0")
    return {name: json.loads(text) for name, text in zip(parts[0::2], parts[1::2], strict=False) if text}


def _round_of(marker_name: str) -> int:
    return 0 if marker_name.startswith("task-") else int(marker_name[1:marker_name.index("-")])


def test_a_node_that_kills_tasks_is_excluded_from_the_next_round(  # noqa: ANN001
        testbed, remote, sample_scene: Path, tmp_path: Path) -> None:
    """Two real nodes in partition qpair; the one whose host name is braas-node kills every render task.
    Once it has killed two tasks and node2 has finished one, recovery resubmits with --exclude=localhost,
    and that round runs on node2 only, until every frame is there."""
    started = time.monotonic()
    wrapper = f"{testbed.workdir}/node-kills-tasks/blender"
    text = _NODE_KILLS_TASKS.format(real=shlex.quote(str(testbed.blender)))
    q = shlex.quote
    put = remote(f"mkdir -p {q(str(Path(wrapper).parent))} && printf %s {q(text)} > {q(wrapper)} && "
                 f"chmod 755 {q(wrapper)}")
    assert put.returncode == 0, put.stderr
    base = Path(load_preset("testbed").source)
    preset = base.read_text().replace('name = "testbed"', 'name = "tb-node-kills"')
    preset = preset.replace('blender = "blender"', f'blender = "{wrapper}"')
    preset = preset.replace('partition_cpu = "qcpu"', 'partition_cpu = "qpair"')  # the finish step can avoid too
    assert wrapper in preset and "qpair" in preset
    (base.parent / "tb-node-kills.toml").write_text(preset)

    job = _json("submit", str(sample_scene), "--preset", "tb-node-kills", "--partition", "qpair",
                "--frames", "1-4", "--chunk", "1", "--retries", "3")
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    final = json.loads(waited.stdout or "{}")
    record = registry.get_job(job["job"])
    job_dir = job["job_dir"]
    markers = _markers(remote, job_dir)
    assert waited.returncode == 0 and final["state"] == "COMPLETED" and final["frames_done"] == 4, (
        f"{final} {waited.stderr}\nmarkers: {markers}")

    got = run_cli("download", job["job"], "--dest", str(tmp_path / "frames"), "--json")
    assert got.returncode == 0, got.stderr
    frames = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert [f.name for f in frames] == [f"frame_{n:06d}.png" for n in range(1, 5)]
    for frame in frames:
        check_frame(frame)

    # The rounds as the cluster holds them: the client's recovery or the finish steps' made them.
    rounds = max(_round_of(name) for name in markers)
    assert record.rounds <= rounds
    scripts = [remote(f"cat {shlex.quote(job_dir)}/{'job.sh' if r == 0 else f'job-r{r}.sh'}").stdout
               for r in range(rounds + 1)]
    excluding = [r for r, script in enumerate(scripts) if "#SBATCH --exclude=localhost" in script.splitlines()]
    assert excluding, f"no round excluded localhost in {rounds} round(s); markers: {markers}"
    first = excluding[0]
    assert first in (1, 2) and excluding == list(range(first, rounds + 1)), (excluding, rounds)

    before = [m for name, m in markers.items() if _round_of(name) < first]
    deaths = sum(1 for m in before if m["node"] == "localhost" and m["state"] == "running")
    node2_done = sum(1 for m in before if m["node"] == "node2" and m["state"] == "done")
    assert deaths >= 2 and node2_done >= 1, f"excluded in round {first} after {deaths} death(s): {markers}"
    after = {name: m for name, m in markers.items() if _round_of(name) >= first}
    assert after and all(m["node"] == "node2" for m in after.values()), after
    assert any(m["state"] == "done" for m in after.values()), after

    # Slurm's own record: the excluding rounds' tasks ran on node2 and nowhere else.
    round_ids = [remote(f"cat {shlex.quote(job_dir)}/submitted/r{r}-array").stdout.strip() for r in range(rounds + 1)]
    for round_id in round_ids[first:]:
        rows = remote(f"sacct -n -P -X -o JobID,NodeList,State -j {shlex.quote(round_id)}").stdout.splitlines()
        assert rows and all(row.split("|")[1] == "node2" for row in rows), rows
    # So did the finish steps of those rounds: the summary is not left to the node that kills tasks.
    finish_ids = _finish_ids(remote, job_dir)
    for round_ in range(first, rounds + 1):
        assert _sacct_row(remote, finish_ids[round_])[1:] == ["node2", "COMPLETED"], (round_, finish_ids)
    print(f"FIGURES node-kills-tasks rounds={rounds + 1} by_the_client={record.rounds} excluded_from_round={first} "
          f"deaths_on_localhost={deaths} done_on_node2_before={node2_done} frames_checked={len(frames)} "
          f"seconds={time.monotonic() - started:.0f}")
