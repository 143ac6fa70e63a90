"""The cluster's own recovery (core.rounds.recover_here) decided and written on a real job directory,
with the scheduler's commands captured instead of run (the test cluster runs them for real in
tests/integration/test_cluster_recovery.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from braas_hpc.core import rounds
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.presets import load_preset
from braas_hpc.core.rounds import RoundKit, recover_here
from braas_hpc.core.service import kit_for

SPEC = JobSpec(name="j1", preset="karolina", scene="/p/scene.blend", frames=(1, 2, 3, 4), chunk=2,
               tasks=((1, 2), (3, 4)), partition="qcpu", account="PROJ-1", retries=2)


class Scheduler:
    """Answers every submission with the next id, as sbatch --parsable would."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv)
        return 0, f"{4241 + len(self.calls)}\n", ""

    def submitted(self) -> list[list[str]]:
        return [argv[5:] for argv in self.calls if argv[:2] == ["sh", "-c"] and "sbatch" in argv]


@pytest.fixture
def job(tmp_path: Path, user_dirs: dict[str, str]) -> JobPaths:
    paths = JobPaths(str(tmp_path / "braas-hpc-me"), SPEC.name)
    for directory in (paths.out_dir, paths.status_dir):
        Path(directory).mkdir(parents=True)
    kit = kit_for(load_preset("karolina"), paths)
    Path(paths.job_json).write_text(json.dumps({"spec": SPEC.to_dict(), "kit": kit.to_dict()}))
    for frame in (1, 2):
        (Path(paths.out_dir) / f"frame_{frame:06d}.png").write_bytes(b"png")
    return paths


def test_missing_frames_go_out_as_the_next_round_with_its_finish_step(job: JobPaths) -> None:
    run = Scheduler()

    said = recover_here(job.job_dir, 0, run)

    assert said == "round 1 submitted for frames [3, 4] as 4242"
    assert Path(job.round_frames_file(1)).read_text() == "3,4\n"
    script = Path(job.round_script(1)).read_text()
    assert "#SBATCH --array=1-1" in script and "--marker-prefix r1-" in script and "#SBATCH --account=PROJ-1" in script
    assert "--round 1" in Path(f"{job.job_dir}/finish-r1.sh").read_text()
    (array, finish) = run.submitted()
    assert array[-1] == job.round_script(1) and "--dependency=afterany:4242" in finish
    assert Path(f"{job.job_dir}/submitted/r1.claim/ready").read_text() == "[]"
    # The kit the job was submitted with writes what this computer writes for the same round.
    kit = RoundKit.from_dict(json.loads(Path(job.job_json).read_text())["kit"])
    assert kit.to_dict() == kit_for(load_preset("karolina"), job).to_dict() and kit.preset.source == "job.json"


def test_one_round_has_one_submitter(job: JobPaths) -> None:
    first, second = Scheduler(), Scheduler()
    assert recover_here(job.job_dir, 0, first).startswith("round 1 submitted")
    assert recover_here(job.job_dir, 0, second) == "round 1 is someone else's already (the client's recovery)"
    assert second.calls == []


@pytest.mark.parametrize(("setup", "said"), [
    (lambda p: Path(p.job_dir, "cancelled").touch(), "the user cancelled the job: nothing is resubmitted"),
    (lambda p: [Path(p.out_dir, f"frame_{f:06d}.png").write_bytes(b"png") for f in (3, 4)], "every frame is there"),
])
def test_nothing_is_submitted_when_nothing_may_be(job: JobPaths, setup, said: str) -> None:  # noqa: ANN001
    setup(job)
    run = Scheduler()
    assert recover_here(job.job_dir, 0, run) == said
    assert run.calls == [] and not Path(f"{job.job_dir}/submitted/r1.claim").exists()


def test_the_retry_limit_holds(job: JobPaths) -> None:
    run = Scheduler()
    assert recover_here(job.job_dir, 2, run) == "no retries left (2 used)"
    assert run.calls == []


def test_a_round_whose_files_could_not_be_written_is_free_again(job: JobPaths, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    def full(path: str, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rounds, "_write", full)
    with pytest.raises(OSError):
        recover_here(job.job_dir, 0, Scheduler())
    assert not Path(f"{job.job_dir}/submitted/r1.claim").exists()  # the client's recovery may take it


def test_a_cancel_that_lands_during_the_submission_undoes_it(job: JobPaths) -> None:
    run = Scheduler()
    original = run.__call__

    def cancelled_meanwhile(argv: list[str]) -> tuple[int, str, str]:
        Path(job.job_dir, "cancelled").touch()  # the user's cancel, just after sbatch answered
        return original(argv)

    said = recover_here(job.job_dir, 0, cancelled_meanwhile)
    assert said.startswith("round 1 submitted")
    assert run.calls[-1][0] == "scancel" and "4242" in run.calls[-1]
    assert not any("--dependency=afterany:4242" in " ".join(argv) for argv in run.calls)  # no finish step


def test_a_claim_left_unready_by_a_dead_claimant_is_taken_over_once_stale(job: JobPaths) -> None:
    claimed = Path(f"{job.job_dir}/submitted/r1.claim")
    claimed.mkdir(parents=True)  # a claimant that died before writing the round's files
    run = Scheduler()
    assert recover_here(job.job_dir, 0, run) == "round 1 is someone else's already (the client's recovery)"
    stale = time.time() - (rounds.STALE_CLAIM_MIN + 1) * 60
    os.utime(claimed, (stale, stale))

    assert recover_here(job.job_dir, 0, run).startswith("round 1 submitted")
    assert (claimed / "ready").is_file() and len(run.submitted()) == 2
    assert [p.name for p in claimed.parent.glob("r1.claim.stale.*")]  # the dead claim, moved aside


def test_a_claim_with_its_files_written_is_never_stale(job: JobPaths) -> None:
    claimed = Path(f"{job.job_dir}/submitted/r1.claim")
    claimed.mkdir(parents=True)
    (claimed / "ready").write_text("[]")  # whoever made it may be submitting now: it stays theirs
    stale = time.time() - 3600
    os.utime(claimed, (stale, stale))
    assert recover_here(job.job_dir, 0, Scheduler()).startswith("round 1 is someone else's")


def test_a_kit_a_newer_client_recorded_is_read_without_the_keys_this_release_does_not_know(job: JobPaths) -> None:
    """A job submitted by a newer braas-hpc, recovered by an older one (an add-on and a CLI of different
    releases): the round is planned with what this release knows, not refused."""
    recorded = json.loads(json.dumps(kit_for(load_preset("karolina"), job).to_dict()))  # as job.json holds it
    newer = json.loads(json.dumps(recorded))
    newer["preset"]["a_key_from_the_future"] = True
    assert RoundKit.from_dict(newer) == RoundKit.from_dict(recorded)
