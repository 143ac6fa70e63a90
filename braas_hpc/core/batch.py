"""Several remote commands in one remote call, each answered as if it had been run alone.

A far cluster costs a round trip (two on a new SSH channel) per command, whatever the command does.
`status` needs a scheduler query, the frames on disk and sometimes the task markers: the batch runs
them all in one call. Some commands are only worth running when an earlier answer calls for them
(a second kind of query when the first failed; the queue or the markers when the accounting does not
know a job yet); the cluster side decides that from the answers it has, by a rule that may err towards
running a command for nothing, never the other way: whatever the caller needs and the batch did not
bring, the caller asks for itself, as it would without a batch.

Each answer comes back as one line, "<tag>\\t<exit status>\\t<stdout, base64>\\t<stderr, base64>", so no
output can pass for another's or for a line of the frame. A line that does not read so is no answer.
"""

from __future__ import annotations

import base64
import binascii
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from .transport import CommandResult, Transport, quote_command

ALWAYS, AFTER_FAILED_QUERY, IF_UNSEEN = "always", "failed", "unseen"
SCHEDULER_TAGS = ("query", "fallback", "live")  # their stdout is what "seen" keys are looked for in

# The batch is a small program: these definitions, then one `step` line per command, every word of it
# quoted by quote_command. A step: <tag> <when> <number of keys> <keys...> <command line>.
#   always: run it.   failed: run it when the step tagged "query" failed and printed nothing.
#   unseen: run it when it has no keys, or one of its keys is not in what the scheduler steps printed.
# A command line is run by this shell as sshd would run it (it was quoted for that by quote_command); it
# may read what the scheduler steps printed so far from the file $BRAAS_BATCH_SEEN.
# Without the tools to frame the answers (base64, mktemp) nothing runs: the caller then runs each command
# itself, once (some have effects: a cancel).
_DEFINITIONS = r"""
printf x | base64 -w 0 > /dev/null 2>&1 || exit 3
t=$(mktemp -d) || exit 1
trap 'rm -rf -- "$t"' EXIT
: > "$t/seen"; failed=0
BRAAS_BATCH_SEEN=$t/seen; export BRAAS_BATCH_SEEN
step() {
  tag=$1 when=$2 n=$3; shift 3
  run=1
  case $when in
    failed) [ "$failed" = 1 ] || run=0 ;;
    unseen) [ "$n" = 0 ] || run=0 ;;
  esac
  while [ "$n" -gt 0 ]; do
    [ "$when" = unseen ] && ! grep -qF -- "$1" "$t/seen" && run=1
    n=$((n - 1)); shift
  done
  [ "$run" = 1 ] || return 0
  (eval "$1") < /dev/null > "$t/out" 2> "$t/err"; s=$?
  o=$(base64 -w 0 < "$t/out") || o=!
  e=$(base64 -w 0 < "$t/err") || e=!
  printf '%s\t%s\t%s\t%s\n' "$tag" "$s" "$o" "$e"
  case $tag in query|fallback|live) cat "$t/out" >> "$t/seen" ;; esac
  if [ "$tag" = query ] && [ "$s" != 0 ] && ! grep -q '[^[:space:]]' "$t/out"; then failed=1; fi
}
"""
# A command line longer than this goes on stdin instead (sshd hands it to the shell as one argument,
# which Linux caps at 128 KiB): a status of a thousand jobs lists a thousand directories.
INLINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Step:
    tag: str  # a word: letters, digits, '-' and '_'
    argv: Sequence[str]
    when: str = ALWAYS
    keys: tuple[str, ...] = ()  # for IF_UNSEEN: job keys as the scheduler prints them


@dataclass
class Answers:
    """What the batch brought, by tag; `take` hands each answer out once."""

    by_tag: dict[str, CommandResult] = field(default_factory=dict)

    def take(self, tag: str) -> CommandResult | None:
        return self.by_tag.pop(tag, None)


def _decode(text: str) -> str | None:
    try:
        return base64.b64decode(text, validate=True).decode(errors="replace")
    except (binascii.Error, ValueError):
        return None


def parse(stdout: str, steps: Sequence[Step]) -> Answers:
    """The answers of the batch's output; a line that does not read as one is dropped (never guessed)."""
    argv_of = {step.tag: tuple(step.argv) for step in steps}
    answers = Answers()
    for line in stdout.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or fields[0] not in argv_of or fields[0] in answers.by_tag or not fields[1].isdigit():
            continue
        out, err = _decode(fields[2]), _decode(fields[3])
        if out is not None and err is not None:
            answers.by_tag[fields[0]] = CommandResult(argv_of[fields[0]], int(fields[1]), out, err)
    return answers


def program(steps: Sequence[Step]) -> str:
    lines = [_DEFINITIONS]
    for step in steps:
        if not step.tag.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"not a batch tag: {step.tag!r}")
        keys = step.keys if step.when == IF_UNSEEN else ()
        lines.append(quote_command(["step", step.tag, step.when, str(len(keys)), *keys, quote_command(step.argv)]))
    return "\n".join([*lines, "exit 0\n"])


async def run(transport: Transport, steps: Sequence[Step], timeout: float = 300) -> Answers:
    """Run the steps in one remote call. A batch that fails as a whole brings no answer (the caller asks
    for each itself); a lost connection is raised, as the first of the commands would have raised it.
    A cluster found without the batch's tools is not sent another batch on the same connection."""
    if not steps or transport in _WITHOUT_TOOLS:
        return Answers()
    text = program(steps)
    if len(text.encode()) <= INLINE_BYTES:
        done = await transport.run(["sh", "-c", text], timeout=timeout, check=False)
    else:  # read by sh from stdin; every step's own stdin is /dev/null, so none eats the program
        done = await transport.run(["sh", "-s"], stdin=text, timeout=timeout, check=False)
    if done.exit_status == NO_TOOLS_EXIT and not done.stdout:
        _WITHOUT_TOOLS.add(transport)
    return parse(done.stdout, steps) if done.exit_status == 0 else Answers()


NO_TOOLS_EXIT = 3  # the program's first line: no base64 (or no `-w`) to frame the answers with
_WITHOUT_TOOLS: weakref.WeakSet[Transport] = weakref.WeakSet()
