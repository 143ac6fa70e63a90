"""PBS Pro's qstat answers as real servers print them, invalid JSON included, read into task states.

The fixtures in tests/data/qstat are written from the published reports of each kind of invalid JSON
(each test names its report); every one has good jobs around the bad one, which must still be read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from braas_hpc.core.errors import SchedulerError
from braas_hpc.core.monitor import aggregate
from braas_hpc.core.schedulers._qstat_json import READ_AS_JSON, REPAIRED, SALVAGED, UNREADABLE, read_jobs, repair
from braas_hpc.core.schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TIMEOUT, UNKNOWN
from braas_hpc.core.schedulers.pbs import PBSScheduler, exit_words, state_of

DATA = Path(__file__).resolve().parents[1] / "data"
QSTAT = DATA / "qstat"
SERVER = "polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"


def states(name: str) -> dict[tuple[str, str], str]:
    return {(s.job_id, s.task): s.state for s in PBSScheduler().parse_query((QSTAT / name).read_text())}


def attrs_of(name: str, job: str) -> dict[str, object]:
    (block,) = [b for b in read_jobs((QSTAT / name).read_text()) if b.job_id == f"{job}.{SERVER}"]
    return dict(block.attrs)


GOOD = {("5101", ""): RUNNING, ("5103", ""): COMPLETED}


@pytest.mark.parametrize(("fixture", "bad_job", "state"), [
    ("control_chars.json", ("5102", ""), FAILED),  # openpbs#2541, OpenPBS non-printing characters design
    ("bad_escapes.json", ("5102", "2"), CANCELLED),  # openpbs PR 2049; balsam#324 (Polaris)
    ("unescaped_quotes.json", ("5102", ""), PENDING),  # openpbs PR 830
    ("leading_zeros.json", ("5102", ""), PENDING),  # openpbs#1255
    ("duplicate_keys.json", ("5102", ""), UNKNOWN),  # openpbs#2677 (duplicate keys)
])
def test_one_bad_job_among_good_ones(fixture: str, bad_job: tuple[str, str], state: str) -> None:
    """The whole answer is not JSON (or is ambiguous), yet every job is read, the bad one too."""
    text = (QSTAT / fixture).read_text()
    if fixture != "duplicate_keys.json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
    assert states(fixture) == {**GOOD, bad_job: state}


def test_control_characters_are_kept_as_the_job_had_them() -> None:
    """Raw newlines and a tab in an exported bash function, an escape sequence in the account name."""
    attrs = attrs_of("control_chars.json", "5102")
    variables = attrs["Variable_List"]
    assert isinstance(variables, dict)
    assert variables["BASH_FUNC_module%%"] == '() {  local _mlre;\n\teval $(/usr/bin/modulecmd bash "$@")\n}'
    assert attrs["Account_Name"] == "Vis\x1b[1m\x1b[31mProject"


def test_backslashes_that_escape_nothing_stay_backslashes() -> None:
    variables = attrs_of("bad_escapes.json", "5102[2]")["Variable_List"]
    assert isinstance(variables, dict)
    assert variables["MYVAR"] == "\\'\"quoted\"\\'"  # \' kept, \" read as the quote it escapes
    assert variables["LIST"] == "a\\,b\\,c"
    assert variables["TRAILING"] == "C:\\dir\\"  # a backslash right before the closing quote is the last character


def test_unescaped_quotes_stay_inside_their_string() -> None:
    comment = attrs_of("unescaped_quotes.json", "5102")["comment"]
    assert comment == 'Not Running: node "x3004c0s7b0n0" is "offline" (health check)'


def test_bare_numbers_with_leading_zeros_are_read_as_their_text() -> None:
    variables = attrs_of("leading_zeros.json", "5102")["Variable_List"]
    assert isinstance(variables, dict)
    assert (variables["SHOT"], variables["TAKE"]) == ("005", "0012")


def test_a_key_twice_with_the_same_value_is_harmless_and_differently_is_unknown() -> None:
    by_task = {s.job_id: s for s in PBSScheduler().parse_query((QSTAT / "duplicate_keys.json").read_text())}
    assert by_task["5103"].state == COMPLETED  # "queue" printed twice, the same
    assert by_task["5102"].state == UNKNOWN and "job_state R and F" in by_task["5102"].raw


def test_what_qstat_printed_reaches_the_status_text_escaped() -> None:
    """A broken answer may put control characters where a letter belongs: the status text shows them escaped.
    (The answer is on one line, not laid out as PBS does: it is read as the JSON it is.)"""
    text = json.dumps({"Jobs": {f"5.{SERVER}": {"job_state": "\x1b[2J"}, f"6.{SERVER}": {"job_state": "R"}}})
    got = {s.job_id: s for s in PBSScheduler().parse_query(text.replace('"R"}', '"R", "job_state": "\\u001b"}'))}
    assert (got["5"].state, got["5"].raw) == (UNKNOWN, '"\\u001b[2J"')
    assert got["6"].state == UNKNOWN
    assert got["6"].raw == f'qstat printed 6.{SERVER} twice, differently (job_state R and "\\u001b")'


def test_repeated_jobs_key_of_older_servers() -> None:
    """openpbs PR 585: `"Jobs":{` before every job, never closed: each job is read on its own."""
    assert states("repeated_jobs_key.json") == {**GOOD, ("5102", ""): RUNNING}


def test_jobs_outside_the_jobs_object_are_read() -> None:
    """A brace closed too early (openpbs PR 1033 fixed the order objects were closed in): valid JSON whose
    `Jobs` holds only the first job. Each job's own block is read instead of what the whole seems to say."""
    whole = json.loads((QSTAT / "misnested.json").read_text())
    assert list(whole["Jobs"]) == [f"5101.{SERVER}"]
    assert states("misnested.json") == {**GOOD, ("5102", ""): RUNNING}


def test_a_table_printed_before_the_json() -> None:
    """openpbs PR 2675: plain-text lines before the JSON."""
    assert states("table_first.json") == GOOD


def test_output_cut_off_loses_only_the_cut_job() -> None:
    """The last job ends mid-way: after its job_state F, before its Exit_status. It is not taken as
    ended (no Exit_status would mean "deleted before it ran"), and the jobs before it are read."""
    got = {(s.job_id, s.task): s for s in PBSScheduler().parse_query((QSTAT / "cut_off.json").read_text())}
    assert {key: s.state for key, s in got.items()} == {("5101", ""): RUNNING, ("5102", ""): RUNNING,
                                                         ("5104", ""): UNKNOWN}
    assert got[("5104", "")].raw.endswith("could not be read: cut off before its Exit_status")


def test_cut_off_partial_line_is_not_read() -> None:
    """A cut in the middle of `"Exit_status":271` would leave `2`: the partial last line is dropped."""
    text = (QSTAT / "cut_off.json").read_text()
    head = text[:text.index('"5104.')]
    live = head + f'"5109.{SERVER}":{{\n            "job_state":"R",\n            "queue":"debug",\n'
    assert states_of_text(live + '            "Exit_status":2')[("5109", "")] == RUNNING
    ended = head + f'"5109.{SERVER}":{{\n            "job_state":"F",\n            "Exit_status":2'
    assert states_of_text(ended)[("5109", "")] == UNKNOWN
    whole_line = ended + "71,\n            \"queue\":\"de"
    assert states_of_text(whole_line)[("5109", "")] == CANCELLED


def states_of_text(text: str) -> dict[tuple[str, str], str]:
    return {(s.job_id, s.task): s.state for s in PBSScheduler().parse_query(text)}


def test_past_repair_the_state_lines_still_tell_and_an_ambiguous_block_is_unknown() -> None:
    blocks = {b.job_id.split(".")[0]: b for b in read_jobs((QSTAT / "past_repair.json").read_text())}
    assert {k: b.how for k, b in blocks.items()} == {"5101": READ_AS_JSON, "5102": SALVAGED, "5105": UNREADABLE,
                                                      "5103": READ_AS_JSON}
    got = {s.job_id: s for s in PBSScheduler().parse_query((QSTAT / "past_repair.json").read_text())}
    assert got["5102"].state == COMPLETED and got["5102"].raw == "F (Exit_status 0); only its state lines could be read"
    assert got["5105"].state == UNKNOWN
    assert got["5105"].raw == f"qstat's JSON for 5105.{SERVER} could not be read: its job_state is printed 2 times"


def test_how_each_fixture_was_read() -> None:
    """Valid JSON is read as it is; a broken answer that repair makes whole is read whole."""
    assert {b.how for b in read_jobs((DATA / "qstat_array.json").read_text())} == {READ_AS_JSON}
    assert {b.how for b in read_jobs((QSTAT / "control_chars.json").read_text())} == {REPAIRED}


@pytest.mark.parametrize("text", [
    (DATA / "qstat_array.json").read_text(),
    json.dumps({"Jobs": {"1.s": {"Variable_List": {"A": "x\n\t\"y\"\\,z", "B": "a\\\"", "C": "\u00e9\x1b"}}}}),
    json.dumps({"a": [1, -2.5e3, "q\"", True, None, {}], "b": "\"", "c": "\\"}, indent=4),
])
def test_repair_leaves_valid_json_as_it_is(text: str) -> None:
    assert repair(text) == text


def test_no_json_at_all_is_an_error_with_the_text() -> None:
    with pytest.raises(SchedulerError, match="qstat printed no JSON: 'qstat: cannot connect"):
        PBSScheduler().parse_query("qstat: cannot connect to server pbs01 (errno=15010)")
    with pytest.raises(SchedulerError, match="cannot be read, with no job in it"):
        PBSScheduler().parse_query('{\n    "timestamp":17,\n    "pbs_server":"pbs01' + "\x00" * 3 + '"\n    "Jobs"')
    assert PBSScheduler().parse_query("") == []
    assert PBSScheduler().parse_query('{"timestamp":1, "pbs_version":"2022", "pbs_server":"p"}\n') == []


def test_one_bad_job_never_hides_the_others_at_job_level() -> None:
    """What the monitor makes of the answer: the readable finished job ends, the unreadable one does not."""
    answer = PBSScheduler().parse_query((QSTAT / "cut_off.json").read_text())
    by_job = {job: [s for s in answer if s.job_id == job] for job in ("5101", "5104")}
    done = PBSScheduler().parse_query((QSTAT / "control_chars.json").read_text())
    assert aggregate([s for s in done if s.job_id == "5103"], frames_missing=0) == COMPLETED
    assert aggregate(by_job["5104"], frames_missing=2) == UNKNOWN  # never ended by an unreadable answer
    assert aggregate(by_job["5101"], frames_missing=2) == RUNNING


ARRAY = {
    # A live array (B): its subjobs as they are.
    ("6200", "1"): PENDING, ("6200", "2"): PENDING, ("6200", "3"): RUNNING, ("6200", "4"): RUNNING,
    ("6200", "5"): COMPLETED,
    ("6200", "6"): CANCELLED,  # X without Exit_status: deleted while queued
    ("6200", "7"): PENDING,  # X with -11 JOB_EXEC_RERUN while the array runs: PBS runs it again
    ("6200", "8"): CANCELLED,  # 265: qdel's SIGKILL
    ("6200", "9"): RUNNING,  # S: suspended after it started
    # A finished array (F): nothing in it runs again.
    ("6300", "1"): COMPLETED,
    ("6300", "2"): CANCELLED,  # F without Exit_status: deleted while queued
    ("6300", "3"): FAILED,  # -11, but its array has finished: the rerun never came; not a kill
    ("6300", "4"): TIMEOUT, ("6300", "5"): CANCELLED,
    ("6300", "6"): FAILED,  # 271 with substate 93: PBS killed it (a limit, a node), not a qdel
    ("6300", "7"): FAILED, ("6300", "8"): FAILED, ("6300", "9"): FAILED,
    ("6300", "10"): FAILED,  # left X with -11 after its array finished: the rerun never comes
}


def test_every_subjob_state_of_a_live_and_a_finished_array() -> None:
    got = {(s.job_id, s.task): s for s in PBSScheduler().parse_query((QSTAT / "array_states.json").read_text())}
    assert {key: s.state for key, s in got.items()} == ARRAY  # the arrays' own lines give no task
    assert got[("6200", "6")].raw == "X (no Exit_status: deleted before it ran)"
    assert got[("6200", "7")].raw == "X (Exit_status -11: JOB_EXEC_RERUN); PBS runs it again"
    assert got[("6300", "6")].raw == "F (Exit_status 271: killed by signal 15; ended by PBS: a limit or a node)"
    assert got[("6300", "4")].exit_code == "-29"


LETTERS = [("Q", PENDING), ("H", PENDING), ("W", PENDING), ("T", PENDING), ("R", RUNNING), ("E", RUNNING),
           ("B", RUNNING), ("S", RUNNING), ("U", RUNNING), ("M", UNKNOWN), ("", UNKNOWN), ("Z", UNKNOWN)]


@pytest.mark.parametrize(("letter", "state"), LETTERS)
def test_every_live_letter_whatever_its_exit_status(letter: str, state: str) -> None:
    """A job still in the queue is live: an Exit_status left from a run PBS requeued (-11) is not its end."""
    assert state_of(letter) == state_of(letter, -11) == state_of(letter, 271, 91) == state


@pytest.mark.parametrize(("exit_status", "substate", "state"), [
    (None, None, CANCELLED), ("", None, CANCELLED), (None, 91, CANCELLED),  # never ran
    (0, 92, COMPLETED), ("0", None, COMPLETED),
    (1, 92, FAILED), (2, None, FAILED), (127, None, FAILED), (143, None, FAILED), (255, None, FAILED),
    (1, 91, CANCELLED),  # deleted: the script caught qdel's signal and exited 1
    (271, None, CANCELLED), (265, None, CANCELLED), (271, 91, CANCELLED),  # qdel: SIGTERM, then SIGKILL
    (271, 93, FAILED), (265, 93, FAILED),  # the same signals sent by PBS itself: a limit, a node
    (267, None, FAILED), (262, None, FAILED), (257, None, FAILED), (256, None, FAILED),  # crashed
    (-29, 93, TIMEOUT), (-29, None, TIMEOUT),
    (-24, 93, FAILED), (-25, 93, FAILED), (-26, 93, FAILED), (-27, 93, FAILED), (-28, 93, FAILED),
    (-1, None, FAILED), (-2, None, FAILED), (-4, None, FAILED), (-5, None, FAILED), (-6, None, FAILED),
    (-7, None, FAILED), (-10, None, FAILED), (-13, None, FAILED), (-17, None, FAILED), (-19, None, FAILED),
    (-21, None, FAILED), (-22, None, FAILED), (-23, None, FAILED), (-30, None, FAILED), (-99, None, FAILED),
    ("abc", None, UNKNOWN), (True, None, UNKNOWN),
])
@pytest.mark.parametrize("letter", ["F", "X"])
def test_every_exit_status_of_an_ended_job(letter: str, exit_status: object, substate: int | None,
                                           state: str) -> None:
    assert state_of(letter, exit_status, substate) == state


@pytest.mark.parametrize("code", [-3, -11, -12, -14, -15, -16, -18, -20])
def test_requeue_codes_are_not_an_end_while_the_array_runs(code: int) -> None:
    """PBS puts the job back in the queue: a subjob of a live array is pending again; once the array or a
    plain job has finished (F), the rerun will not come: it failed, or was deleted (substate 91)."""
    assert state_of("X", code, 69, array_done=False) == PENDING
    assert state_of("X", code, 69, array_done=True) == FAILED
    assert state_of("F", code, 92) == FAILED and state_of("F", code, 91) == CANCELLED
    assert state_of("R", code) == RUNNING and state_of("Q", code) == PENDING


def test_exit_words() -> None:
    assert exit_words(-11) == "Exit_status -11: JOB_EXEC_RERUN"
    assert exit_words("265") == "Exit_status 265: killed by signal 9"
    assert exit_words(3) == "Exit_status 3"
    assert exit_words("x") == "Exit_status 'x': not a number"
