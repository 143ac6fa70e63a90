"""PBS Pro: script text, submit parsing and qstat JSON replayed from a captured shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from braas_hpc.core.errors import PresetError, SchedulerError
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.presets import preset_from_dict
from braas_hpc.core.schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TIMEOUT, Round
from braas_hpc.core.schedulers.pbs import PBSScheduler, base_id, state_of

DATA = Path(__file__).resolve().parents[1] / "data"
PRESET = preset_from_dict(
    {"name": "alcf", "scheduler": "pbs", "host": "login", "workdir": "/eagle/P", "gpu_request": "ngpus",
     "extra_directives": ["-l filesystems=home:eagle", "-k doe"], "drop_directives": ["-m"]}, "test")
SPEC = JobSpec(name="9shot", preset="alcf", scene="/s.blend", frames=(1, 2, 3, 4), chunk=1, device="GPU",
               walltime_min=30, max_parallel=2, tasks=((1,), (2,), (3,), (4,)), account="VisProject",
               partition="debug", gpus=1, cycles_device="CUDA", email="me@example.org", memory_gb=8)
PATHS = JobPaths("/eagle/P/braas-hpc", "9shot")


def test_array_directives() -> None:
    lines = PBSScheduler().directives(SPEC, PRESET, PATHS)
    assert lines == [
        "#PBS -N j9shot",  # PBS names start with a letter
        "#PBS -A VisProject",
        "#PBS -q debug",
        "#PBS -l select=1:ngpus=1:mem=8gb",
        "#PBS -l walltime=00:30:00",
        "#PBS -J 1-4%2",
        "#PBS -r y",
        "#PBS -j oe",
        "#PBS -o /eagle/P/braas-hpc/jobs/9shot/log/pbs-j9shot.log",
        "#PBS -M me@example.org",  # -m dropped by the preset; the extras come after the drop filter
        "#PBS -l filesystems=home:eagle",
        "#PBS -k doe",
    ]


def test_one_task_is_not_an_array() -> None:
    pbs = PBSScheduler()
    lines = pbs.directives(SPEC, PRESET, PATHS, Round(1, 1))
    assert not any(line.startswith(("#PBS -J", "#PBS -r")) for line in lines)
    assert "#PBS -o /eagle/P/braas-hpc/jobs/9shot/log/pbs-r1-j9shot.log" in lines
    assert pbs.submissions(PRESET, Round(1, 1)) == [1]
    assert pbs.submit_argv("/j.sh", 1) == ["qsub", "-v", "BRAAS_TASK_ID=1", "/j.sh"]
    assert pbs.submissions(PRESET, Round(0, 4)) == [None] and pbs.submit_argv("/j.sh") == ["qsub", "/j.sh"]


def test_parse_submit() -> None:
    pbs = PBSScheduler()
    assert pbs.parse_submit("4120[].polaris-pbs-01\n") == "4120[].polaris-pbs-01"
    assert pbs.parse_submit("4121.server\n") == "4121.server"
    with pytest.raises(SchedulerError, match="Unknown queue"):
        pbs.parse_submit("qsub: Unknown queue\n")
    assert base_id("4120[].polaris-pbs-01") == base_id("4120[3].x") == base_id("4120") == "4120"


def test_qstat_json_states() -> None:
    states = PBSScheduler().parse_query((DATA / "qstat_array.json").read_text())
    by_task = {(s.job_id, s.task): s.state for s in states}
    assert by_task == {
        ("4120", "1"): COMPLETED, ("4120", "2"): FAILED, ("4120", "3"): RUNNING, ("4120", "4"): PENDING,
        ("4121", ""): CANCELLED, ("4122", ""): TIMEOUT,
    }
    assert PBSScheduler().job_key("4120[].polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov") == "4120"


@pytest.mark.parametrize(("letter", "exit_status", "state"), [
    ("Q", None, PENDING), ("H", None, PENDING), ("W", None, PENDING), ("T", None, PENDING),
    ("R", None, RUNNING), ("E", None, RUNNING), ("B", None, RUNNING), ("S", None, RUNNING), ("U", None, RUNNING),
    ("F", "0", COMPLETED), ("X", "0", COMPLETED), ("F", "1", FAILED), ("F", "271", CANCELLED),
    ("F", "-29", TIMEOUT), ("M", None, "UNKNOWN"),
])
def test_every_state_letter(letter: str, exit_status: str | None, state: str) -> None:
    assert state_of(letter, exit_status) == state


def test_garbage_is_an_error_with_the_text() -> None:
    with pytest.raises(SchedulerError, match="qstat printed no JSON"):
        PBSScheduler().parse_query("qstat: cannot connect to server pbs01 (errno=15010)")
    assert PBSScheduler().parse_query("") == []


def test_cancel_removes_whole_arrays() -> None:
    assert PBSScheduler().cancel_argv(["4120[].server", "4121.server"]) == ["qdel", "4120[].server", "4121.server"]


def test_one_subjob_is_named_for_a_cancel_of_its_own() -> None:
    """A group's chunk taken by another cluster: only its subjob goes (qdel takes '123[4].server')."""
    assert PBSScheduler().task_id("4120[].server", 4) == "4120[4].server"
    assert PBSScheduler().task_id("4121.server", 1) is None  # not an array: no subjob to name


def test_gpus_are_asked_for_in_the_schedulers_own_words() -> None:
    """`gpu_request` is each scheduler's word: unset, PBS asks `ngpus`; Slurm's `gres` is refused here
    before any script is written, naming the preset file."""
    plain = preset_from_dict({"name": "alcf", "scheduler": "pbs", "host": "login", "workdir": "/eagle/P"}, "test")
    assert "#PBS -l select=1:ngpus=1:mem=8gb" in PBSScheduler().directives(SPEC, plain, PATHS)
    slurm_word = preset_from_dict({"name": "alcf", "scheduler": "pbs", "host": "login", "workdir": "/eagle/P",
                                   "gpu_request": "gres"}, "/home/me/presets/alcf.toml")
    with pytest.raises(PresetError, match=r"preset /home/me/presets/alcf.toml: gpu_request 'gres' is not one of "
                                          r"ngpus, none under PBS Pro"):
        PBSScheduler().directives(SPEC, slurm_word, PATHS)
