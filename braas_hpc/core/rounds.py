"""A round of a job: its files and its submissions, the same whether this computer submits it (a
resubmission, core.service) or the cluster does (the finish step's own recovery, `recover_here`, run
from the copy of this module installed with the cluster scripts), so a laptop closed at 18:00 still
gets its lost frames rendered again by morning.

Who submits round N: whoever creates `submitted/rN.claim` (mkdir, atomic on the cluster's file system).
The claimant writes the round's files, marks the claim ready, then submits through the guard (one
record per submission: the scheduler's answer is kept, and a repeat prints it instead of submitting
again). Anyone who finds a ready claim takes the round as it is: running its guarded submissions again
only reads their records (or makes a submission the claimant died before making). So the client and the
cluster never both submit a round, and either can finish what the other started.

Standard library only: it runs on the cluster too (inside Blender's Python, in the finish step).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .frames import chunk_frames
from .jobs import JobPaths, JobSpec, frames_file_text, missing_frames
from .markers import MARKER_BYTES, parse_marker
from .planning import EARLY_DEATH, Plan, plan
from .presets import Preset, preset_from_dict
from .schedulers import Scheduler, scheduler_for
from .schedulers.base import Round, Trust

# Runs one submit command at most once per record file, even when the client is gone: the output
# (the scheduler's id line) is kept in the record and printed again for a later run. Hang-ups are
# ignored so a dropped connection does not stop it between the submission and the record.
GUARD = r"""
trap '' HUP PIPE
record=$1; shift
mkdir -p -- "$(dirname -- "$record")"
if [ -s "$record" ]; then cat -- "$record"; exit 0; fi
if ! mkdir -- "$record.lock" 2>/dev/null; then
  echo "another submission of this job is running now (lock $record.lock)" >&2; exit 75
fi
out=$("$@"); status=$?
if [ "$status" -eq 0 ]; then printf '%s\n' "$out" > "$record.part" && mv -f -- "$record.part" "$record"; fi
rmdir -- "$record.lock"
printf '%s\n' "$out"
exit "$status"
"""
CANCELLED_FLAG = "cancelled"  # in the job directory: the user cancelled, no side recovers the job
# A claim still without `ready` this long after it was made: its claimant died while writing the round's
# files (seconds of work). Either side may then take the round over.
STALE_CLAIM_MIN = 10
# Claims round "$2" in the submitted directory "$1": exit 0 when this side now owns it. A stale claim is
# moved aside first (mv is atomic: of two taking it over, one wins).
CLAIM_SH = r"""
d=$1 c=$1/r$2.claim
mkdir -p -- "$d" && mkdir -- "$c" 2>/dev/null && exit 0
[ ! -e "$c/ready" ] && [ -n "$(find "$c" -maxdepth 0 -mmin +"$3" 2>/dev/null)" ] &&
  mv -- "$c" "$c.stale.$$" 2>/dev/null && mkdir -- "$c" 2>/dev/null && exit 0
exit 1
"""
Runner = Callable[[list[str]], tuple[int, str, str]]  # argv -> (exit status, stdout, stderr)


def guarded(argv: list[str], record: str) -> list[str]:
    return ["sh", "-c", GUARD, "sh", record, *argv]


@dataclass(frozen=True)
class RoundKit:
    """What every round of a job is written with, fixed when the job is submitted: the preset as it was
    resolved then (with the Blender `install` recorded), how Blender starts, where the render and finish
    tasks are and what a job checks before it runs them. Kept in job.json for the cluster's recovery."""

    preset: Preset
    blender: tuple[str, ...]
    render_task: str
    finish_task: str
    render_trust: Trust
    finish_trust: Trust

    def to_dict(self) -> dict[str, object]:
        # As a preset file would say it: no "source", and no key left unset (None: a file cannot say it).
        preset = {k: v for k, v in dataclasses.asdict(self.preset).items() if k != "source" and v is not None}
        return {"preset": preset, "blender": list(self.blender), "render_task": self.render_task,
                "finish_task": self.finish_task, "render_trust": dataclasses.asdict(self.render_trust),
                "finish_trust": dataclasses.asdict(self.finish_trust)}

    @classmethod
    def from_dict(cls, data: dict) -> RoundKit:
        # Keys a newer braas-hpc wrote (its kit recorded by a newer client, read by this one's recovery):
        # the round is written without them rather than not at all. A preset file keeps the strict check.
        known = {f.name for f in dataclasses.fields(Preset)}
        preset = {key: value for key, value in data["preset"].items() if key in known}
        return cls(preset_from_dict(preset, "job.json"), tuple(data["blender"]), data["render_task"],
                   data["finish_task"], Trust(**data["render_trust"]), Trust(**data["finish_trust"]))


def finish_file(paths: JobPaths, round_: int) -> str:
    return f"{paths.job_dir}/{'finish.sh' if round_ == 0 else f'finish-r{round_}.sh'}"


def round_script(paths: JobPaths, round_: int) -> str:
    return paths.script if round_ == 0 else paths.round_script(round_)


def job_script(spec: JobSpec, kit: RoundKit, paths: JobPaths, round_: Round, scheduler: Scheduler) -> str:
    return scheduler.render_script(spec, kit.preset, paths, list(kit.blender), kit.render_task, round_,
                                   kit.render_trust)


def finish_script(spec: JobSpec, kit: RoundKit, paths: JobPaths, round_: Round, scheduler: Scheduler) -> str:
    return scheduler.finish_script(spec, kit.preset, paths, list(kit.blender), kit.finish_task, round_,
                                   kit.finish_trust)


def round_files(spec: JobSpec, kit: RoundKit, paths: JobPaths, round_: Round, tasks: tuple[tuple[int, ...], ...],
                scheduler: Scheduler) -> dict[str, str]:
    """A resubmitted round's files by path: its frames file, its job script and its finish step."""
    return {paths.round_frames_file(round_.number): frames_file_text(tasks),
            round_script(paths, round_.number): job_script(spec, kit, paths, round_, scheduler),
            finish_file(paths, round_.number): finish_script(spec, kit, paths, round_, scheduler)}


def array_submissions(scheduler: Scheduler, preset: Preset, paths: JobPaths, round_: Round
                      ) -> list[tuple[list[str], int]]:
    """The round's guarded submissions (one array, or one job per task where the site has no arrays),
    each with the number of tasks it runs."""
    records = f"{paths.job_dir}/submitted"
    script = round_script(paths, round_.number)
    return [(guarded(scheduler.submit_argv(script, task), f"{records}/r{round_.number}-"
                     f"{'array' if task is None else f'task{task}'}"), round_.tasks if task is None else 1)
            for task in scheduler.submissions(preset, round_)]


def finish_choices(scheduler: Scheduler, paths: JobPaths, round_: Round, ids: Sequence[str]) -> list[list[str]]:
    """The finish step's guarded submission after every task of the round, avoiding the round's nodes
    where it can, else without (the scheduler refuses an exclusion that leaves its partition no node)."""
    after = scheduler.after_argv(ids)
    avoiding = scheduler.exclude_argv(round_.exclude_nodes)
    record = f"{paths.job_dir}/submitted/r{round_.number}-finish"
    return [guarded(scheduler.submit_argv(finish_file(paths, round_.number), options=options), record)
            for options in ([[*after, *avoiding], after] if avoiding else [after])]


def finish_note(paths: JobPaths, round_: int, finish_id: str) -> list[str]:
    """Appends the finish step's id to the job's finish.txt (not the registry: it is no render task)."""
    return ["sh", "-c", 'printf "%s %s\\n" "$2" "$3" >> "$1"', "sh", f"{paths.job_dir}/finish.txt", str(round_),
            finish_id]


# --- the cluster's own recovery: the finish step calls this with the round it finishes -----------------

def _run(argv: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    return done.returncode, done.stdout, done.stderr


def _markers(paths: JobPaths) -> list[dict[str, object]]:
    markers = []
    for path in sorted(glob.glob(os.path.join(paths.status_dir, "*.json"))):
        try:
            with open(path, encoding="utf-8", errors="replace") as stream:
                found = parse_marker(stream.read(MARKER_BYTES + 1))
        except OSError:
            continue
        if found is not None:
            markers.append(found)
    return markers


def _timed_out(markers: list[dict[str, object]], walltime_min: int, now: float) -> bool:
    """A task of the job still "running" after most of its walltime: the scheduler ended it at walltime."""
    return any(m.get("state") == "running" and isinstance(m.get("started"), int | float)
               and now - m["started"] >= walltime_min * 60 * EARLY_DEATH for m in markers)  # type: ignore[operator]


def _frames_present(out_dir: str) -> set[str]:
    """Names of the non-empty files in out/ (a file that goes while it is looked at is not there)."""
    try:
        entries = list(os.scandir(out_dir))
    except FileNotFoundError:
        return set()
    present = set()
    for entry in entries:
        try:
            if entry.is_file() and entry.stat().st_size > 0:
                present.add(entry.name)
        except FileNotFoundError:
            continue
    return present


def claim_argv(paths: JobPaths, round_: int) -> list[str]:
    """The command that claims round `round_` (exit 0: this side owns it), taking over a stale claim."""
    return ["sh", "-c", CLAIM_SH, "sh", f"{paths.job_dir}/submitted", str(round_), str(STALE_CLAIM_MIN)]


def claim(paths: JobPaths, round_: int) -> bool:
    """Whether this side (the cluster, where the job's files are) now owns round `round_`: it is the first
    to ask, or the first claimant died before its files were written."""
    return _run(claim_argv(paths, round_))[0] == 0


def recover_here(job_dir: str, finished_round: int, run: Runner = _run, now: float | None = None) -> str:
    """After round `finished_round` of the job in `job_dir` ended: if frames are missing, retries are left
    and the user did not cancel, submit them as the next round with its own finish step, as the client's
    recovery would. Returns what it did, for the finish step's log."""
    paths = JobPaths(os.path.dirname(os.path.dirname(os.path.normpath(job_dir))), os.path.basename(job_dir))
    with open(paths.job_json, encoding="utf-8") as stream:
        job = json.load(stream)
    if "kit" not in job:
        return "no recovery here: the job was submitted by an older braas-hpc"
    spec, kit = JobSpec.from_dict(job["spec"]), RoundKit.from_dict(job["kit"])
    number = finished_round + 1
    if kit.preset.is_local:  # its queue's script is not among the installed ones; the client is here anyway
        return "this computer's jobs are recovered by the client (braas-hpc wait, status, render)"
    if os.path.exists(f"{paths.job_dir}/{CANCELLED_FLAG}"):
        return "the user cancelled the job: nothing is resubmitted"
    if spec.group:  # its rounds overlap and other clusters share its frames: the client's group decides
        return f"a member of group {spec.group}: its lost frames go back to the group (braas-hpc wait {spec.group})"
    if number > spec.retries:
        return f"no retries left ({spec.retries} used)"
    missing = tuple(missing_frames(spec, _frames_present(paths.out_dir)))
    if not missing:
        return "every frame is there"
    if not claim(paths, number):
        return f"round {number} is someone else's already (the client's recovery)"
    markers = _markers(paths)
    now = time.time() if now is None else now
    chosen = plan(spec, markers, missing, _timed_out(markers, spec.walltime_min, now), now)
    ids = submit_claimed(spec, kit, paths, number, chosen, run)
    return f"round {number} submitted for frames {list(missing)} as {', '.join(ids)}"


def submit_claimed(spec: JobSpec, kit: RoundKit, paths: JobPaths, number: int, chosen: Plan, run: Runner
                   ) -> list[str]:
    """Write the claimed round's files, mark the claim ready, submit it and its finish step."""
    scheduler = scheduler_for(kit.preset.scheduler)
    tasks = tuple(tuple(t) for t in chunk_frames(list(chosen.frames), chosen.chunk))
    round_ = Round(number, len(tasks), chosen.exclude_nodes)
    claimed = f"{paths.job_dir}/submitted/r{number}.claim"
    try:
        for path, text in round_files(spec, kit, paths, round_, tasks, scheduler).items():
            _write(path, text)
        _write(f"{claimed}/ready", json.dumps(chosen.exclude_nodes))
    except BaseException:
        os.rmdir(claimed)  # nothing submitted: the round is free again for the client's recovery
        raise
    return submit_ready(kit, paths, round_, scheduler, run)


def submit_ready(kit: RoundKit, paths: JobPaths, round_: Round, scheduler: Scheduler, run: Runner) -> list[str]:
    """Submit a round whose files are written (or read the records of submissions already made)."""
    ids = []
    for argv, _tasks in array_submissions(scheduler, kit.preset, paths, round_):
        status, stdout, stderr = run(argv)
        if status != 0:
            raise RuntimeError(f"submitting round {round_.number} failed: {stderr.strip() or stdout.strip()}")
        ids.append(scheduler.parse_submit(stdout))
    if os.path.exists(f"{paths.job_dir}/{CANCELLED_FLAG}"):  # the user cancelled meanwhile: undo it
        run(scheduler.cancel_argv(ids))
        return ids
    for argv in finish_choices(scheduler, paths, round_, ids):
        status, stdout, _ = run(argv)
        if status == 0:
            run(finish_note(paths, round_.number, scheduler.parse_submit(stdout)))
            break
    return ids


def _write(path: str, text: str) -> None:
    temp = f"{path}.part"
    with open(temp, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temp, path)


__all__ = ["CANCELLED_FLAG", "GUARD", "RoundKit", "array_submissions", "claim", "finish_choices", "finish_file",
           "finish_note", "guarded", "recover_here", "round_files"]
