"""Recovery on the cluster with no client: the finish step of a round that lost frames submits them as
the next round itself (core.rounds.recover_here, from the core kit installed with the cluster scripts),
and the client and the cluster never both submit one round (the claim in submitted/rN.claim)."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from braas_hpc.core import registry
from braas_hpc.core.presets import BUILTIN_DIR, load_preset, load_preset_file
from tests.conftest import run_cli
from tests.helpers import eventually, make_sample, partition_closed
from tests.integration.test_recovery import _NODE_KILLS_TASKS, _json, _markers, _round_of
from tests.retarget import retarget, to_toml


def _frames_there(remote, job_dir: str) -> set[str]:  # noqa: ANN001
    done = remote(f"find {shlex.quote(job_dir)}/out -name 'frame_*' -size +0 -printf '%f\\n'")
    return set(done.stdout.split())


def _rendered_once(markers: dict[str, dict]) -> Counter[int]:
    """How often each frame was rendered, over every task of every round."""
    return Counter(frame for marker in markers.values() for frame in marker.get("rendered", []))


def test_a_lost_task_is_rendered_again_by_the_cluster_with_no_client(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-6", "--chunk", "2",
                "--max-parallel", "1")
    job_dir = job["job_dir"]
    assert remote(f"scancel {job['scheduler_ids'][0]}_3").returncode == 0  # task 3 (frames 5, 6) never runs
    # From here on no braas-hpc command runs on this side: the cluster alone brings the frames back.
    wanted = {f"frame_{n:06d}.png" for n in range(1, 7)}
    eventually(lambda: _frames_there(remote, job_dir), lambda got: got >= wanted, "every frame", timeout=600)
    log = eventually(lambda: remote(f"cat {shlex.quote(job_dir)}/log/finish.log").stdout,
                     lambda text: "round 1 submitted for frames [5, 6]" in text, "the finish step's recovery")
    markers = _markers(remote, job_dir)
    assert markers["r1-task-1.json"]["frames"] == [5, 6] and markers["r1-task-1.json"]["rendered"] == [5, 6]
    assert set(_rendered_once(markers).values()) == {1}, markers  # no frame rendered twice
    finished = eventually(lambda: remote(f"cat {shlex.quote(job_dir)}/log/r1-finish.log").stdout,
                          lambda text: "core-hours" in text, "round 1's finish step's summary")  # its last line
    assert "r2-task-1.json" not in markers and "every frame is there" in finished, (log, finished)

    # The client, looking later, takes the job as it stands: complete, nothing resubmitted again.
    (status,) = _json("status", job["job"])["jobs"]
    assert status["state"] == "COMPLETED" and status["frames_done"] == 6


def test_a_node_that_kills_tasks_is_left_by_the_cluster_alone(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    """The test cluster's braas-node kills every render task (tests/integration/test_recovery.py); with
    no client, the finish steps resubmit round after round, excluding that node once it has killed two
    tasks and node2 has finished one, until every frame is there: each rendered once."""
    wrapper = f"{testbed.workdir}/node-kills-tasks/blender"
    text = _NODE_KILLS_TASKS.format(real=shlex.quote(str(testbed.blender)))
    q = shlex.quote
    assert remote(f"mkdir -p {q(str(Path(wrapper).parent))} && printf %s {q(text)} > {q(wrapper)} && "
                  f"chmod 755 {q(wrapper)}").returncode == 0
    base = Path(load_preset("testbed").source)
    preset = base.read_text().replace('name = "testbed"', 'name = "tb-kills-alone"')
    preset = preset.replace('blender = "blender"', f'blender = "{wrapper}"')
    preset = preset.replace('partition_cpu = "qcpu"', 'partition_cpu = "qpair"')
    (base.parent / "tb-kills-alone.toml").write_text(preset)

    job = _json("submit", str(sample_scene), "--preset", "tb-kills-alone", "--partition", "qpair",
                "--frames", "1-4", "--chunk", "1", "--retries", "3")
    job_dir = job["job_dir"]
    wanted = {f"frame_{n:06d}.png" for n in range(1, 5)}
    eventually(lambda: _frames_there(remote, job_dir), lambda got: got >= wanted, "every frame", timeout=900,
               every=2)

    markers = _markers(remote, job_dir)
    assert set(_rendered_once(markers).values()) == {1}, markers
    rounds = max(_round_of(name) for name in markers)
    assert rounds >= 1
    scripts = [remote(f"cat {q(job_dir)}/{'job.sh' if r == 0 else f'job-r{r}.sh'}").stdout for r in range(rounds + 1)]
    assert any("#SBATCH --exclude=localhost" in s.splitlines() for s in scripts), "no round left the node"
    claims = remote(f"ls {q(job_dir)}/submitted").stdout.split()
    assert [f"r{r}.claim" for r in range(1, rounds + 1)] == sorted(c for c in claims if c.endswith(".claim"))
    assert registry.get_job(job["job"]).rounds == 0  # the client did nothing meanwhile


def _lose_a_frame_of_a_finished_job(remote, sample_scene: Path) -> tuple[dict, str]:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-2", "--chunk", "1")
    done = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    assert done.returncode == 0, done.stderr
    job_dir = job["job_dir"]
    eventually(lambda: remote(f"cat {shlex.quote(job_dir)}/log/finish.log").stdout,
               lambda text: "every frame is there" in text, "round 0's finish step")
    assert remote(f"rm {shlex.quote(job_dir)}/out/frame_000002.png").returncode == 0
    return job, job_dir


def test_when_the_cluster_took_the_round_the_client_takes_it_up(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job, job_dir = _lose_a_frame_of_a_finished_job(remote, sample_scene)
    q = shlex.quote
    with partition_closed(testbed.slurm_conf, "qcpu"):  # round 1 waits: its frame is still missing below
        cluster = remote(f"bash {q(job_dir)}/finish.sh; tail -n 5 {q(job_dir)}/log/finish.log")  # as Slurm runs it
        assert "round 1 submitted for frames [2]" in cluster.stdout, cluster.stdout + cluster.stderr
        mine = _json("resubmit", job["job"])  # the client's recovery comes second: it adopts round 1

    recorded = remote(f"cat {q(job_dir)}/submitted/r1-array").stdout.strip()
    assert list(mine["scheduler_ids"]) == [recorded] and mine["frames"] == "2"
    record = registry.get_job(job["job"])
    assert record.rounds == 1 and record.scheduler_ids[-1] == recorded
    final = _json("wait", job["job"], "--timeout", "600")
    assert final["state"] == "COMPLETED" and final["frames_done"] == 2
    again = {name: m for name, m in _markers(remote, job_dir).items() if _round_of(name) >= 1}
    assert _rendered_once(again) == {2: 1}, again  # the lost frame, rendered again once, by one round


def test_when_the_client_took_the_round_the_cluster_leaves_it(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job, job_dir = _lose_a_frame_of_a_finished_job(remote, sample_scene)
    q = shlex.quote
    with partition_closed(testbed.slurm_conf, "qcpu"):  # round 1 waits: its frame is still missing below
        mine = _json("resubmit", job["job"])
        cluster = remote(f"bash {q(job_dir)}/finish.sh; tail -n 5 {q(job_dir)}/log/finish.log")

    assert "round 1 is someone else's already" in cluster.stdout, cluster.stdout + cluster.stderr
    assert remote(f"ls {q(job_dir)}/submitted").stdout.split().count("r1-array") == 1
    final = _json("wait", job["job"], "--timeout", "600")
    assert final["state"] == "COMPLETED"
    assert list(mine["scheduler_ids"]) == [registry.get_job(job["job"]).scheduler_ids[-1]]
    again = {name: m for name, m in _markers(remote, job_dir).items() if _round_of(name) >= 1}
    assert _rendered_once(again) == {2: 1}, again  # the lost frame, rendered again once, by one round


def test_a_cancelled_job_is_not_recovered_by_the_cluster(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    job = _json("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-4", "--chunk", "1",
                "--max-parallel", "1")
    job_dir = job["job_dir"]
    assert run_cli("cancel", job["job"]).returncode == 0
    log = eventually(lambda: remote(f"cat {shlex.quote(job_dir)}/log/finish.log 2>/dev/null").stdout,
                     lambda text: "braas-hpc finish:" in text, "the finish step after the cancel", timeout=300)
    assert "the user cancelled the job: nothing is resubmitted" in log
    assert remote(f"ls {shlex.quote(job_dir)}/submitted").stdout.split().count("r1.claim") == 0


def test_pbs_frames_come_back_from_the_cluster_after_an_admins_qdel(testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    """Polaris's scripts on the PBS Pro stand-in: an admin's qdel of the whole array while one subjob runs
    and one waits, and no braas-hpc command after the submit: the finish step (depend=afterany) qsubs the
    lost frames as round 1."""
    base = load_preset("testbed")
    preset = retarget(load_preset_file(BUILTIN_DIR / "polaris.toml"), base)
    (Path(base.source).parent / f"{preset.name}.toml").write_text(to_toml(preset))
    sample = make_sample(tmp_path / "pbs")
    job = _json("submit", str(sample), "--preset", preset.name, "--partition", "debug", "--frames", "1-6")
    array_id, job_dir = job["scheduler_ids"][0], job["job_dir"]
    eventually(lambda: remote(f"qstat -t -f -F json {shlex.quote(array_id)}").stdout,
               lambda out: '"job_state":"R"' in out and '"job_state":"Q"' in out, "a running and a queued subjob")
    assert remote(f"qdel {shlex.quote(array_id)}").returncode == 0

    wanted = {f"frame_{n:06d}.png" for n in range(1, 7)}
    eventually(lambda: _frames_there(remote, job_dir), lambda got: got >= wanted, "every frame", timeout=600)
    log = remote(f"cat {shlex.quote(job_dir)}/log/finish.log").stdout
    assert "round 1 submitted for frames" in log, log
    again = {name: m for name, m in _markers(remote, job_dir).items() if _round_of(name) >= 1}
    assert again and all(set(m["rendered"]) <= set(m["frames"]) for m in again.values())
    assert set(_rendered_once(again).values()) == {1}


def test_client_and_cluster_racing_for_a_round_submit_it_once(testbed, remote, sample_scene: Path) -> None:  # noqa: ANN001
    """Both at the same moment, three times over: the client's `resubmit` and the finish step run again
    on the cluster. Exactly one of them submits each round; the other takes it as it is."""
    q = shlex.quote
    for attempt in range(3):
        job, job_dir = _lose_a_frame_of_a_finished_job(remote, sample_scene)
        with partition_closed(testbed.slurm_conf, "qcpu"), ThreadPoolExecutor(2) as both:
            mine = both.submit(run_cli, "resubmit", job["job"], "--json")
            cluster = both.submit(remote, f"bash {q(job_dir)}/finish.sh; tail -n 3 {q(job_dir)}/log/finish.log")
            mine_done, cluster_said = mine.result(timeout=300), cluster.result(timeout=300).stdout
        recorded = remote(f"cat {q(job_dir)}/submitted/r1-array").stdout.strip()
        submitted_by_cluster = "round 1 submitted for frames [2]" in cluster_said
        assert submitted_by_cluster != ("round 1 is someone else's already" in cluster_said), cluster_said
        if mine_done.returncode == 0:  # the client submitted, or adopted the cluster's round
            assert json.loads(mine_done.stdout)["scheduler_ids"] == [recorded], (attempt, mine_done.stdout)
        else:  # the cluster was still writing the round's files: the client takes it up at its next look
            assert submitted_by_cluster and "is being submitted by the cluster right now" in mine_done.stderr
        final = _json("wait", job["job"], "--timeout", "600")
        assert final["state"] == "COMPLETED" and final["frames_done"] == 2
        assert registry.get_job(job["job"]).scheduler_ids[-1] == recorded
        # Slurm's own count: round 0's two array tasks and round 1's one, never a second round 1.
        accounting = f"sacct -n -X -P -o JobID -S now-1hour --name {q(job['job'])}"
        tasks = eventually(lambda command=accounting: remote(command).stdout.split(), lambda ids: len(ids) >= 3,
                           "the accounting of both rounds")
        assert len(tasks) == 3, tasks
        print(f"FIGURES race attempt={attempt} cluster_submitted={submitted_by_cluster} "
              f"client_rc={mine_done.returncode} render_tasks={len(tasks)}")


def test_a_round_left_half_claimed_is_taken_over_by_the_client_once_stale(testbed, remote,  # noqa: ANN001
                                                                         sample_scene: Path) -> None:
    """A finish step killed while writing round 1's files leaves a claim without `ready`. While fresh it may
    still be at work: the client says so and does nothing; once stale, the client takes the round."""
    job, job_dir = _lose_a_frame_of_a_finished_job(remote, sample_scene)
    claimed = shlex.quote(f"{job_dir}/submitted/r1.claim")
    assert remote(f"mkdir -p {claimed}").returncode == 0

    fresh = run_cli("resubmit", job["job"])
    assert fresh.returncode != 0 and "being submitted by the cluster right now" in fresh.stderr, fresh.stderr

    assert remote(f"touch -d '30 minutes ago' {claimed}").returncode == 0
    mine = _json("resubmit", job["job"])
    assert mine["frames"] == "2" and remote(f"test -s {claimed}/ready").returncode == 0
    assert list(mine["scheduler_ids"]) == [remote(f"cat {shlex.quote(job_dir)}/submitted/r1-array").stdout.strip()]
    final = _json("wait", job["job"], "--timeout", "600")
    assert final["state"] == "COMPLETED" and final["frames_done"] == 2
