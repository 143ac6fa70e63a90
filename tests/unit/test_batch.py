"""Several commands in one remote call (core.batch), run by a real shell through the local transport."""

from __future__ import annotations

import asyncio
import base64

from braas_hpc.core import batch
from braas_hpc.core.batch import AFTER_FAILED_QUERY, IF_UNSEEN, Step
from braas_hpc.core.transport.local import LocalTransport


def _run(steps: list[Step]) -> batch.Answers:
    return asyncio.run(batch.run(LocalTransport(), steps))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_each_answer_is_the_commands_own_bytes() -> None:
    tricky = "tab\there\nline\n\\0 \x01 ünï\n\n"
    got = _run([Step("one", ["printf", "%s", tricky]), Step("two", ["sh", "-c", "echo err >&2; exit 3"]),
                Step("three", ["printf", ""])])
    assert (got.take("one").stdout, got.take("one")) == (tricky, None)  # handed out once
    two = got.take("two")
    assert (two.exit_status, two.stdout, two.stderr) == (3, "", "err\n")
    assert got.take("three").stdout == ""


def test_a_fallback_runs_only_after_a_query_that_failed_and_said_nothing() -> None:
    fallback = Step("fallback", ["echo", "second"], AFTER_FAILED_QUERY)
    failed = _run([Step("query", ["sh", "-c", "echo ' ' ; exit 1"]), fallback])
    assert failed.take("fallback").stdout == "second\n"
    answered = _run([Step("query", ["sh", "-c", "echo 41_1; exit 1"]), fallback])  # PBS: printed what it knows
    assert answered.take("fallback") is None
    fine = _run([Step("query", ["true"]), fallback])
    assert fine.take("fallback") is None


def test_an_unseen_step_runs_when_a_key_is_missing_from_the_schedulers_answers() -> None:
    steps = [Step("query", ["printf", "41_1|RUNNING\n"]),
             Step("live", ["printf", "43_2|PENDING\n"], IF_UNSEEN, ("41", "43")),
             Step("m-a", ["echo", "a"], IF_UNSEEN, ("41",)), Step("m-b", ["echo", "b"], IF_UNSEEN, ("43", "44")),
             Step("m-c", ["echo", "c"], IF_UNSEEN, ())]
    got = _run(steps)
    assert got.take("live") is not None  # 43 was not in the query's answer
    assert got.take("m-a") is None  # 41 was
    assert got.take("m-b").stdout == "b\n"  # 44 is in no answer, not even the queue's
    assert got.take("m-c").stdout == "c\n"  # no key: nothing could tell


def test_keys_and_commands_are_never_run_as_shell(tmp_path) -> None:  # noqa: ANN001
    canary = tmp_path / "canary"
    hostile = f"$(touch {canary})"
    got = _run([Step("query", ["echo", hostile, "-v"]), Step("u", ["echo", hostile], IF_UNSEEN, (hostile, "-v"))])
    assert got.take("query").stdout == f"{hostile} -v\n" and got.take("u") is None  # every key seen, as keys
    assert not canary.exists()


def test_lines_that_do_not_read_as_answers_are_dropped() -> None:
    steps = [Step("a", ["true"]), Step("b", ["true"]), Step("c", ["true"]), Step("d", ["true"])]
    text = "\n".join([
        f"a\t0\t{_b64('first')}\t",  # kept
        f"a\t0\t{_b64('forged second answer')}\t",  # a tag answered twice: the first stands
        f"b\tx\t{_b64('status not a number')}\t",
        "c\t0\tnot base64!\t",
        f"d\t0\t{_b64('three fields')}",
        f"zz\t0\t{_b64('a tag not asked for')}\t",
        "garbage",
    ])
    got = batch.parse(text, steps)
    assert got.take("a").stdout == "first"
    assert [got.take(tag) for tag in "bcd"] == [None, None, None] and got.take("zz") is None


def test_a_batch_that_fails_as_a_whole_brings_nothing() -> None:
    class Broken(LocalTransport):
        async def _exec(self, command: str, stdin: bytes | None, timeout: float | None
                        ) -> tuple[int | None, bytes, bytes]:
            return 1, f"query\t0\t{_b64('half')}\t\n".encode(), b"mktemp: no space\n"

    assert asyncio.run(batch.run(Broken(), [Step("query", ["true"])])).by_tag == {}


def test_a_batch_too_long_for_a_command_line_goes_on_stdin() -> None:
    """sshd (and here /bin/sh -c) takes the command line as one argument, which Linux caps at 128 KiB: a
    status of a thousand jobs lists more than that."""
    many = [f"/w/braas-hpc/jobs/job-{n:04d}/out" for n in range(5000)]  # 170 kB in all
    got = _run([Step("frames", ["sh", "-c", "cat; echo read-nothing"]),  # a step's stdin is not the program
                Step("query", ["sh", "-c", 'echo "$#"', "sh", *many])])
    assert got.take("query").stdout.strip() == "5000"
    assert got.take("frames").stdout == "read-nothing\n"
