"""Job state: the scheduler's word per task, checked against the frames that really exist.

A job missing from the queue is never "finished" by that fact: the frame files decide (principle 7).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import batch, registry
from . import live as glimpse
from .context import JobContext
from .errors import BraasError, PresetError, connection_failure_kind
from .frames import format_frames
from .jobs import JobPaths, frame_file_name, missing_frames
from .markers import MARKER_BYTES, parse_marker
from .presets import Preset, load_preset, preset_files
from .registry import JobRecord
from .schedulers import Scheduler, TaskState, scheduler_for
from .schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TERMINAL, TIMEOUT, UNKNOWN, Round
from .split import merge_failed_name
from .transport import Transport, transport_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobStatus:
    job: str
    preset: str
    state: str
    frames_done: int
    frames_total: int
    tasks: dict[str, int] = field(default_factory=dict)  # normalised state -> number of task lines
    scheduler_ids: tuple[str, ...] = ()
    missing: tuple[int, ...] = ()
    summary: bool = False  # the finish step wrote summary.json (and thumb.jpg) in the job directory
    preview: str = ""  # here: the newest frame's small JPEG the tasks made (core.live), "" before the first
    progress: tuple[glimpse.TaskProgress, ...] = ()  # each running task's progress within its frame

    def to_json(self) -> dict[str, object]:
        return {"job": self.job, "preset": self.preset, "state": self.state, "frames_done": self.frames_done,
                "frames_total": self.frames_total, "tasks": self.tasks, "scheduler_ids": list(self.scheduler_ids),
                "missing": format_frames(self.missing), "summary": self.summary, "preview": self.preview or None,
                "progress": [p.to_json() for p in self.progress]}


def aggregate(states: list[TaskState], frames_missing: int, unseen: bool = False) -> str:
    """One state for the job from its task states and its frames on disk.

    `unseen`: a scheduler id of the job had no answer at all (just submitted, not yet in the
    accounting database, or purged); the job is then never taken as ended.
    """
    kinds = {s.state for s in states}
    if unseen or not states or not kinds <= TERMINAL:
        if RUNNING in kinds:
            return RUNNING
        if PENDING in kinds:
            return PENDING
        # Nothing the scheduler knows (yet, or any more): only the frames can tell it is done.
        return COMPLETED if frames_missing == 0 else UNKNOWN
    if frames_missing == 0:
        return COMPLETED
    for state in (CANCELLED, TIMEOUT):
        if state in kinds:
            return state
    return FAILED


def covered_tasks(task: str) -> set[int] | None:
    """Array indices one scheduler line stands for: "3" -> {3}; "[2-5%2]" or "[1,4-5]" (tasks not
    started, Slurm) -> the range; "" -> None, the whole job. An unreadable index covers nothing."""
    if not task:
        return None
    body = task.strip("[]").split("%", 1)[0]
    indices: set[int] = set()
    for part in body.split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return set()
        indices.update(range(int(first), int(last or first) + 1))
    return indices


def is_unplaced(state: TaskState, expected_tasks: int) -> bool:
    """An ended line of an array without a task index. Slurm's accounting can keep an array task so
    (seen when a pending task is cancelled before the array's first task starts: the task that then
    runs under the array's own id is recorded as "123", the others not at all); it stands for no task."""
    return expected_tasks > 1 and not state.task and state.state in TERMINAL


def uncovered_tasks(states: list[TaskState], expected_tasks: int) -> set[int]:
    """Indices 1..expected_tasks no line of `states` stands for."""
    covered: set[int] = set()
    for state in states:
        if is_unplaced(state, expected_tasks):
            continue
        indices = covered_tasks(state.task)
        if indices is None:
            return set()
        covered |= indices
    return set(range(1, expected_tasks + 1)) - covered


def answer_is_whole(answer: list[TaskState], expected_tasks: int) -> bool:
    """Whether the scheduler's lines for one id account for every task it runs.

    Accounting records array tasks as they start, each in its own record: on a busy controller sacct
    can list a finished task while a running one is not in the database yet. Taking such an answer
    for the whole array would end a job with frames still rendering. `expected_tasks` 0: not known
    (a job registered by an older version), any answer counts.
    """
    if not answer:
        return False
    if expected_tasks <= 1 or any(s.state not in TERMINAL for s in answer):
        return True  # a live task: the job is not taken as ended anyway
    return not uncovered_tasks(answer, expected_tasks)


# Lists the non-empty frame files of many out/ directories in one call: "<dir>\t<name>\0" each, and
# "<dir>\tsummary.json\0" when the finish step has written the job's summary beside out/.
_FRAMES_SCRIPT = ('for d in "$@"; do [ -d "$d" ] && find "$d" -mindepth 1 -maxdepth 1 -type f -name "frame_*" '
                  '-size +0 -printf "%h\\t%f\\0"; [ -s "$d/../summary.json" ] && printf "%s\\tsummary.json\\0" "$d"; '
                  'done; exit 0')


def _frames_argv(records: list[JobRecord]) -> list[str]:
    return ["sh", "-c", _FRAMES_SCRIPT, "sh", *(JobPaths(r.remote_root, r.name).out_dir for r in records)]


async def _frames_present(transport: Transport, records: list[JobRecord],
                          ahead: batch.Answers | None = None) -> dict[str, set[str]]:
    """Frame files of every job of a cluster, in one remote call (not one per job), or from the batch."""
    dirs = {JobPaths(r.remote_root, r.name).out_dir: r.name for r in records}
    present: dict[str, set[str]] = {r.name: set() for r in records}
    if not dirs:
        return present
    done = (ahead and ahead.take("frames")) or await transport.run(_frames_argv(records), timeout=120)
    for item in done.stdout.split("\0"):
        directory, _, name = item.partition("\t")
        if directory in dirs and name:
            present[dirs[directory]].add(name)
    return present


@dataclass(frozen=True)
class Answers:
    """The scheduler's lines for each asked id, and the ids whose lines account for every task they run."""

    by_id: dict[str, list[TaskState]]
    whole: set[str]


def _unfinished_ids(records: list[JobRecord]) -> list[str]:
    return [job_id for r in records if r.state not in TERMINAL for job_id in r.scheduler_ids]


async def _query(transport: Transport, kind: str, records: list[JobRecord],
                 ahead: batch.Answers | None = None) -> Answers:
    """One scheduler call for every unfinished job of a cluster (a second kind of call if that fails),
    and one call to the live queue for arrays the accounting does not cover whole yet; each taken from
    the batch (`ahead`) when it brought it."""
    ids = _unfinished_ids(records)
    if not ids:
        return Answers({}, set())
    by_id = await _ask_scheduler(transport, kind, ids, ahead)
    expected = {job_id: r.id_tasks.get(job_id, 0) for r in records for job_id in r.scheduler_ids}
    whole = {job_id for job_id in ids if answer_is_whole(by_id[job_id], expected[job_id])}
    partial = [job_id for job_id in ids if job_id not in whole]
    scheduler = scheduler_for(kind)
    if partial and (argv := scheduler.live_query_argv(partial)):
        # Accounting lags the controller (a job just submitted or a task just started is not recorded
        # yet; a job queued where it cannot start yet may not be until it can) and never records a task
        # cancelled before it started. The queue lists every task still to run or running: what it does
        # not list has ended, so with its lines added the answer is whole.
        # The batch asked the queue about every unfinished id: its lines for the others are not read.
        live = (ahead and ahead.take("live")) or await transport.run(argv, check=False)
        if live.exit_status == 0 or scheduler.says_unknown_id(live.stderr):
            for state in scheduler.parse_fallback(live.stdout):
                for job_id in partial:
                    if scheduler.job_key(job_id) == state.job_id:
                        by_id[job_id] = [s for s in by_id[job_id] if s.task != state.task] + [state]
            whole.update(partial)
    return Answers(by_id, whole)


async def _ask_scheduler(transport: Transport, kind: str, ids: list[str],
                         ahead: batch.Answers | None = None) -> dict[str, list[TaskState]]:
    by_id: dict[str, list[TaskState]] = defaultdict(list)
    scheduler = scheduler_for(kind)
    states: list[TaskState] = []
    done = (ahead and ahead.take("query")) or await transport.run(scheduler.query_argv(ids), check=False)
    if done.stdout.strip():
        # PBS prints the jobs it knows and complains about the others: what it printed still counts.
        states = scheduler.parse_query(done.stdout)
    elif done.exit_status != 0 and (fallback := scheduler.fallback_query_argv(ids)):
        again = (ahead and ahead.take("fallback")) or await transport.run(fallback, check=False)
        states = scheduler.parse_fallback(again.stdout)
    # A failed poll leaves states unknown, never "failed": frames and the next poll decide.
    for state in states:
        by_id[state.job_id].append(state)
    return {job_id: by_id.get(scheduler.job_key(job_id), []) for job_id in ids}


# For each job: "<job dir> <tasks in its latest round> <markers still running> <markers ended>".
_MARKERS_COUNT = r"""
  n=$(wc -l < "$d/$f" 2>/dev/null || echo 0); r=0; e=0
  for m in "$d/status/${p}task-"*.json; do
    [ -e "$m" ] || continue
    if grep -q '"state": "running"' "$m"; then r=$((r + 1)); else e=$((e + 1)); fi
  done
  printf '%s	%s	%s	%s
' "$d" "$n" "$r" "$e"
"""
_MARKERS_SCRIPT = 'while [ "$#" -ge 3 ]; do\n  d=$1 p=$2 f=$3; shift 3' + _MARKERS_COUNT + "done\n"
# The same in a batch, for the jobs with a key no scheduler answer so far mentions: each job as
# "<number of keys> <keys...> <job dir> <prefix> <frames file>".
_UNSEEN_MARKERS_SCRIPT = r"""
seen=${BRAAS_BATCH_SEEN:-/dev/null}
while [ "$#" -ge 4 ]; do
  k=$1; shift; run=0; [ "$k" = 0 ] && run=1
  while [ "$k" -gt 0 ]; do grep -qF -- "$1" "$seen" || run=1; k=$((k - 1)); shift; done
  d=$1 p=$2 f=$3; shift 3
  [ "$run" = 1 ] || continue
""" + _MARKERS_COUNT + "done\n"


def _marker_args(record: JobRecord) -> list[str]:
    paths = JobPaths(record.remote_root, record.name)
    frames_file = paths.round_frames_file(record.rounds).rsplit("/", 1)[-1]
    return [paths.job_dir, f"r{record.rounds}-" if record.rounds else "", frames_file]


def _markers_argv(records: list[JobRecord]) -> list[str]:
    return ["sh", "-c", _MARKERS_SCRIPT, "sh", *(arg for record in records for arg in _marker_args(record))]


def _unseen_markers_argv(scheduler: Scheduler, records: list[JobRecord]) -> list[str]:
    args: list[str] = []
    for record in records:
        keys = [scheduler.job_key(job_id) for job_id in record.scheduler_ids]
        args += [str(len(keys)), *keys, *_marker_args(record)]
    return ["sh", "-c", _UNSEEN_MARKERS_SCRIPT, "sh", *args]


async def _markers_then_frames(transport: Transport, markers_argv: list[str], records: list[JobRecord]
                               ) -> tuple[str, dict[str, set[str]]]:
    """Markers read and then, in the same call, the jobs' frames on disk: a listing no older than the
    markers (a task whose marker says it ended has its frames in place)."""
    steps = [batch.Step("read_markers", markers_argv), batch.Step("frames", _frames_argv(records))]
    answers = await batch.run(transport, steps)
    read = answers.take("read_markers") or await transport.run(markers_argv, timeout=120, check=False)
    return read.stdout, await _frames_present(transport, records, answers)


async def _ended_by_markers(transport: Transport, records: list[JobRecord], ahead: batch.Answers | None = None,
                            relisted: dict[str, set[str]] | None = None) -> set[str]:
    """Jobs the scheduler no longer knows whose every task of the latest round wrote its final marker.

    Without accounting (squeue forgets finished jobs) this is what tells a failed job from a lost
    answer; a task killed before it could write its marker keeps the job UNKNOWN. A job's counts come
    from the batch when it brought them (its frames were listed after them); the others' in one call,
    which lists their frames after the markers too, into `relisted` (job -> frame files).
    """
    by_dir = {JobPaths(r.remote_root, r.name).job_dir: r.name for r in records}
    found = ahead.take("markers") if ahead else None
    text = found.stdout if found else ""
    answered = {line.split("\t", 1)[0] for line in text.splitlines()}
    if asked := [r for r in records if JobPaths(r.remote_root, r.name).job_dir not in answered]:
        later, present = await _markers_then_frames(transport, _markers_argv(asked), asked)
        text += later
        if relisted is not None:
            relisted.update(present)
    ended = set()
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[0] in by_dir and all(f.strip().isdigit() for f in fields[1:]):
            tasks, running, finished = (int(f) for f in fields[1:])
            if tasks and not running and finished >= tasks:
                ended.add(by_dir[fields[0]])
    return ended


# Each marker asked for as "<path>\0<its JSON, or nothing when the task never wrote one>\0".
_MARKER_TEXTS_SCRIPT = (f'for m in "$@"; do printf "%s\\0" "$m"; head -c {MARKER_BYTES + 1} -- "$m" 2>/dev/null; '
                        'printf "\\0"; done; exit 0')  # capped: a cut marker is a damaged one


def state_from_marker(text: str, missing: set[int]) -> tuple[str, str]:
    """An ended task the scheduler does not list, by its marker: (state, why). Its frames all on disk:
    COMPLETED, whatever the marker got to say; a marker left "running" was killed before its last word;
    no marker: the task never started (cancelled while pending: Slurm's accounting keeps no line)."""
    if not text:
        return CANCELLED, "never started (no marker)"
    marker = parse_marker(text)
    if marker is None:  # unreadable, or NaN/a wrong type in it: this task failed, the others are read on
        return FAILED, "marker damaged"
    frames = marker.get("frames")
    if isinstance(frames, list) and frames and not set(frames) & missing:
        return COMPLETED, "its frames are on disk"
    word = marker.get("state")
    if word == "moved":  # a group member's chunk another cluster took (core.group): nothing to render here
        return COMPLETED, "marker: moved to another cluster"
    return (COMPLETED, "marker: done") if word == "done" else (FAILED, f"marker: {word}")


async def _states_from_markers(transport: Transport, record: JobRecord, uncovered: dict[str, set[int]]
                               ) -> tuple[list[TaskState], set[str]]:
    """States of a job's ended array tasks that no scheduler answer lists (accounting lags, and never
    records a task cancelled while pending), from their markers, and the job's frame files listed after
    them, in one call: ([], set()) when there is nothing to read or the call failed. Each round submits
    one array, so an id's place among the job's ids is its round."""
    paths = JobPaths(record.remote_root, record.name)
    wanted: dict[str, tuple[str, int]] = {}
    for round_, job_id in enumerate(record.scheduler_ids):
        for task in sorted(uncovered.get(job_id, ())):
            wanted[f"{paths.status_dir}/{Round(round_, 0).marker_name(task)}"] = (job_id, task)
    if not wanted:
        return [], set()
    read, present = await _markers_then_frames(transport, ["sh", "-c", _MARKER_TEXTS_SCRIPT, "sh", *wanted],
                                               [record])
    parts = read.split("\0")
    texts = {path: text for path, text in zip(parts[0::2], parts[1::2], strict=False) if path in wanted}
    if len(texts) != len(wanted):
        return [], set()  # the call failed: counts stay as the scheduler gave them
    missing = set(missing_frames(record.spec, present[record.name]))
    states = []
    for path, (job_id, task) in wanted.items():
        state, why = state_from_marker(texts[path].strip(), missing)
        states.append(TaskState(job_id, str(task), state, why))
    return states, present[record.name]


def _batch_steps(kind: str, records: list[JobRecord]) -> list[batch.Step]:
    """Everything a status of these jobs usually needs, as one remote call: the scheduler's answer (a
    second kind of query when the first failed), the live queue when the answer lacks a job, the frames
    on disk, and the markers of a job no scheduler answer mentions (it may have ended unseen)."""
    ids = _unfinished_ids(records)
    frames = batch.Step("frames", _frames_argv(records))
    if not ids:
        return [frames]  # finished jobs are not asked about: only their frames
    scheduler = scheduler_for(kind)
    steps = [batch.Step("query", scheduler.query_argv(ids))]
    if fallback := scheduler.fallback_query_argv(ids):
        steps.append(batch.Step("fallback", fallback, batch.AFTER_FAILED_QUERY))
    if live := scheduler.live_query_argv(ids):
        steps.append(batch.Step("live", live, batch.IF_UNSEEN, tuple(scheduler.job_key(i) for i in ids)))
    unfinished = [r for r in records if r.state not in TERMINAL]
    # The frames are listed after every answer that can say a task ended (the queue, the markers): a task
    # has renamed its last frame into place before it ends, so a listing made later holds it. Listed first,
    # a task ending in between would look ended with its last frame missing (FAILED).
    return [*steps, batch.Step("markers", _unseen_markers_argv(scheduler, unfinished)), frames,
            batch.Step("glimpse", glimpse.glimpse_argv(unfinished))]


async def _glimpses(transport: Transport, preset: Preset, records: list[JobRecord],
                    ahead: batch.Answers | None) -> dict[str, glimpse.Glimpse]:
    """Previews and task progress (core.live): from the batch, never a call of their own to a cluster
    (a batch that brought nothing shows the previews held here); this computer is asked directly."""
    answer = ahead.take("glimpse") if ahead else None
    unfinished = [r for r in records if r.state not in TERMINAL]
    if answer is None and preset.is_local and unfinished:
        answer = await transport.run(glimpse.glimpse_argv(unfinished), timeout=60, check=False)
    return glimpse.read(answer.stdout if answer else "", records)


async def _decide(transport: Transport, record: JobRecord, answers: Answers, present: set[str]
                  ) -> tuple[str, dict[str, int], list[int], set[str]]:
    """One job's state, task counts and missing frames from the scheduler's answers and its frame files
    (`present`); and the frame files it decided on (listed again when markers had to be read)."""
    missing = missing_frames(record.spec, present)
    if record.state in TERMINAL:
        # Finished jobs are never polled again. A job whose frames went missing since is not
        # complete, whatever the scheduler said then.
        return (FAILED if record.state == COMPLETED and missing else record.state), record.tasks, missing, present
    states = [s for job_id in record.scheduler_ids for s in answers.by_id.get(job_id, [])]
    unseen = any(job_id not in answers.whole for job_id in record.scheduler_ids)
    if aggregate(states, len(missing), unseen) in TERMINAL:
        # Ending now, and counted once for good: the array tasks no answer lists are counted too.
        uncovered = {job_id: left for job_id in record.scheduler_ids
                     if (left := uncovered_tasks(answers.by_id.get(job_id, []), record.id_tasks.get(job_id, 0)))}
        from_markers, listed = await _states_from_markers(transport, record, uncovered)
        if from_markers:
            # The markers now count the tasks an unplaced line stood for: it is not counted twice.
            states = [s for job_id in record.scheduler_ids for s in answers.by_id.get(job_id, [])
                      if not is_unplaced(s, record.id_tasks.get(job_id, 0))] + from_markers
            present = listed  # listed after the markers: what they say ended is in it
            missing = missing_frames(record.spec, present)
    return aggregate(states, len(missing), unseen), dict(Counter(s.state for s in states)), missing, present


async def status_of_preset(preset: Preset, records: list[JobRecord], also: Sequence[batch.Step] = (),
                            also_answers: batch.Answers | None = None) -> list[JobStatus]:
    """The jobs' states; `also`: steps a caller needs next, brought in the same call, their answers put
    in `also_answers` (none on this computer)."""
    transport = transport_for(preset)
    # This computer is no round trip away: its jobs are asked about command by command.
    ahead = None if preset.is_local else await batch.run(transport, [*_batch_steps(preset.scheduler, records), *also])
    if ahead is not None and also_answers is not None:
        for step in also:
            if (answer := ahead.take(step.tag)) is not None:
                also_answers.by_tag[step.tag] = answer
    answers = await _query(transport, preset.scheduler, records, ahead)
    frames = await _frames_present(transport, records, ahead)
    found: dict[str, tuple[str, dict[str, int], list[int]]] = {}
    for record in records:
        state, tasks, missing, frames[record.name] = await _decide(transport, record, answers, frames[record.name])
        found[record.name] = (state, tasks, missing)
    unknown = {r.name: r for r in records if found[r.name][0] == UNKNOWN}
    relisted: dict[str, set[str]] = {}
    for name in await _ended_by_markers(transport, list(unknown.values()), ahead, relisted) if unknown else ():
        missing = found[name][2]
        if name in relisted:  # listed after the markers that say every task ended
            frames[name] = relisted[name]
            missing = missing_frames(unknown[name].spec, relisted[name])
        found[name] = (FAILED if missing else COMPLETED, found[name][1], missing)
    glimpses = await _glimpses(transport, preset, records, ahead)
    results = []
    for record in records:
        state, tasks, missing = found[record.name]
        if record.spec.split:
            state = split_state(record, state, frames[record.name], len(missing))
        if state in TERMINAL and record.state not in TERMINAL:
            registry.set_state(record.name, state, tasks)
        results.append(JobStatus(
            record.name, record.preset, state, len(record.spec.frames) - len(missing),
            len(record.spec.frames), tasks, record.scheduler_ids, tuple(missing),
            "summary.json" in frames[record.name], str(glimpses[record.name].preview or ""),
            glimpses[record.name].tasks if state == RUNNING else ()))
    return results


def split_state(record: JobRecord, state: str, present: set[str], parts_missing: int) -> str:
    """A split still (core.split) is complete only once its merged frame exists: with every part there
    and no merged frame yet, its finish step has still to merge (running), unless it said the merge
    failed; a job that ended complete and lost its merged frame since is failed."""
    spec = record.spec
    if frame_file_name(spec.split_frame, spec.extension) in present:
        return COMPLETED
    if record.state in TERMINAL:
        return FAILED if record.state == COMPLETED else record.state
    if parts_missing or state != COMPLETED:
        return state
    return FAILED if merge_failed_name(spec.split_frame) in present else RUNNING


class PresetMissing(PresetError):
    """A job's preset file was removed since the job was submitted."""


ERROR_KINDS = ("preset_missing", "preset", "host_key", "authentication", "connection", "error")


@dataclass(frozen=True)
class ClusterError:
    """Why some jobs got no answer this time: their cluster did not answer, or their preset is gone.
    `error` is kept so a caller that cannot go on without these jobs (`wait`) raises it as it was."""

    preset: str
    records: tuple[JobRecord, ...]
    error: BraasError

    @property
    def jobs(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.records)

    @property
    def kind(self) -> str:
        """One of ERROR_KINDS: what failed, for scripts (`status --json`)."""
        if isinstance(self.error, PresetMissing):
            return "preset_missing"
        if isinstance(self.error, PresetError):
            return "preset"
        return connection_failure_kind(self.error) or "error"

    @property
    def lasting(self) -> bool:
        """Waiting does not fix it: only a dropped or refused connection is waited out (a host key, a
        login or a preset needs the user; a scheduler's unreadable answer is not a pause either)."""
        return self.kind != "connection"

    def jobs_json(self) -> list[dict[str, object]]:
        """Its jobs as `status --json` lists them: the keys of an answer, with what only the cluster could
        say null, the state UNKNOWN (not ended: nobody could tell) and the error."""
        return [{"job": r.name, "preset": r.preset, "state": UNKNOWN, "frames_done": None,
                 "frames_total": len(r.spec.frames), "tasks": {}, "scheduler_ids": list(r.scheduler_ids),
                 "missing": None, "summary": False, "preview": None, "progress": [],
                 "error": {"kind": self.kind, "message": str(self.error)}}
                for r in self.records]


@dataclass(frozen=True)
class StatusReport:
    """The jobs that were answered, in the order asked, and one error per cluster (or per job whose
    preset is gone) that was not."""

    statuses: list[JobStatus]
    errors: list[ClusterError] = field(default_factory=list)
    asked: tuple[str, ...] = ()  # every job asked about, in order

    def to_json(self) -> list[dict[str, object]]:
        """One entry per job asked about, in order; `error` is null for a job its cluster answered."""
        entries: dict[str, dict[str, object]] = {s.job: {**s.to_json(), "error": None} for s in self.statuses}
        for error in self.errors:
            entries.update(zip(error.jobs, error.jobs_json(), strict=True))
        order = {job: i for i, job in enumerate(self.asked)}
        return [entries[job] for job in sorted(entries, key=lambda job: order.get(job, len(order)))]

    def unanswered(self) -> set[str]:
        return {job for e in self.errors for job in e.jobs}

    def raise_first(self) -> list[JobStatus]:
        """The statuses, when every job was answered; else the first error, as it was raised."""
        if self.errors:
            raise self.errors[0].error
        return self.statuses


def preset_or_error(name: str, group: list[JobRecord]) -> Preset | list[ClusterError]:
    if name not in preset_files():
        return [ClusterError(name, (r,), PresetMissing(f"preset {name!r} no longer exists: " + (
            f"braas-hpc forget {r.name} (in Blender: Remove from List)" if r.state in TERMINAL else
            f"it was last seen {r.state}; cancel it on the cluster if it may still run, then "
            f"braas-hpc forget --force {r.name}"))) for r in group]
    try:
        return load_preset(name)
    except PresetError as error:
        return [ClusterError(name, tuple(group), error)]


async def status_report(names: list[str] | None = None) -> StatusReport:
    """Every job (or the ones named), one batched query per cluster. A cluster that does not answer, or
    a job whose preset is gone, is reported as such and does not hide the others."""
    records = [registry.get_job(n) for n in names] if names else registry.list_jobs()
    by_preset: dict[str, list[JobRecord]] = defaultdict(list)
    for record in records:
        by_preset[record.preset].append(record)
    results: list[JobStatus] = []
    errors: list[ClusterError] = []
    for preset_name, group in by_preset.items():
        preset = preset_or_error(preset_name, group)
        if isinstance(preset, list):
            errors += preset
            continue
        try:
            results += await status_of_preset(preset, group)
        except BraasError as error:
            log.info("status: %s did not answer: %s", preset_name, error)
            errors.append(ClusterError(preset_name, tuple(group), error))
    order = {r.name: i for i, r in enumerate(records)}
    return StatusReport(sorted(results, key=lambda s: order[s.job]), errors, tuple(order))


async def status(names: list[str] | None = None) -> list[JobStatus]:
    """Every job asked about, or the first cluster's error (for callers that need them all)."""
    return (await status_report(names)).raise_first()


async def job_status(job: JobContext) -> JobStatus:
    """The state of one resolved job (core.context), without looking it up again."""
    (found,) = await status_of_preset(job.preset, [job.record])
    return found


async def job_status_and(job: JobContext, also: Sequence[batch.Step]) -> tuple[JobStatus, batch.Answers]:
    """The job's state and the answers of `also`, in one remote call (empty answers on this computer, or
    where the batch could not run: the caller then runs those commands itself)."""
    ahead = batch.Answers()
    (found,) = await status_of_preset(job.preset, [job.record], also, ahead)
    return found, ahead
