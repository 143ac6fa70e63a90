"""One refresher for every open page: asks each cluster once per refresh, on the CLI's back-off.

A refresh is one remote call per cluster (core.batch through core.monitor): the scheduler's answer and
the frames on disk, as `braas-hpc status` asks them, with the task markers (seconds per frame), the
log tails and the cluster's interactive sessions brought in the same call. Refreshes follow `status
--watch`: 2 s, then 4, 8 ... up to 30 s (`$BRAAS_HPC_POLL_MAX`), sooner when the cluster's job watcher
says a job ended (core.events), again from 2 s after a button was pressed or a job was submitted.
Frames the watcher saw land are shown without asking the scheduler. Lost frames are resubmitted as
`status` does (core.recovery). With no page open, or every job ended, nothing is asked at all.

Groups (one film over several clusters, core.group) are driven here while a page is open: each refresh
looks at every unfinished group once (`group.look`: one status call per member cluster, bringing the
member's markers and log tails too), which also hands out frames and moves chunks; member jobs are not
asked about again in their cluster's own call. While a group runs, refreshes come at least every
`group.POLL_S` seconds, as `braas-hpc wait GROUP` looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from braas_hpc_interactive.core.records import SessionRecord, all_records

from ..core import batch, events, group, monitor, recovery, registry, service, transfer, watch
from ..core.context import JobContext, job_context
from ..core.errors import BraasError, UsageError, connection_failure_kind
from ..core.fanout import Group
from ..core.jobs import JobPaths
from ..core.presets import Preset, load_preset
from ..core.registry import JobRecord
from ..core.schedulers.base import TERMINAL, UNKNOWN
from ..core.transport import CommandResult, transport_for
from . import sessions, snapshot

log = logging.getLogger(__name__)
LOCAL_LOOK_S = 1.0  # the job list and downloaded frames on this computer: looked at this often (no network)
ACTIONS = ("cancel", "resubmit", "download")
MOVES_SHOWN = 8  # a group's newest hand-outs and moves kept for the page
NO_GROUP_RESUBMIT = ("{name} is a group: it hands the frames a cluster lost to its clusters again by itself, "
                     "so it has no Resubmit")


@dataclass
class ClusterAnswer:
    statuses: list[monitor.JobStatus] = field(default_factory=list)
    errors: list[monitor.ClusterError] = field(default_factory=list)
    sessions: list[dict[str, object]] = field(default_factory=list)
    members: dict[str, group.Look] = field(default_factory=dict)  # group members' looks, by member job


# The newest logs of a job's log/ ($1): "<name>\0<its last $2 lines, at most $3 bytes>\0" for the $4 most
# recently written, newest first, from the last $5 lines of each. A job of a thousand tasks sends four tails,
# not a thousand. Blender writes a status line for each step of a frame (`Fra:3 ... | Updating Camera`,
# some forty a frame) and we add a sample count every few seconds: a run of those is shown as its last
# line, so the tail shows the frames' ends and errors, not forty steps of one frame.
_NEWEST_TAILS_SCRIPT = r"""
cd -- "$1" 2>/dev/null || exit 0
ls -t -- *.log 2>/dev/null | head -n "$4" | while IFS= read -r f; do
  [ -f "$f" ] || continue
  printf '%s\0' "$f"
  tail -n "$5" -- "$f" | tr -d '\000' | awk '
    /^(Fra:[0-9]+ |BRAAS-SAMPLES )/ { held = $0; next }
    { if (held != "") print held; held = ""; print }
    END { if (held != "") print held }' | tail -n "$2" | tail -c "$3"
  printf '\0'
done
exit 0
"""
LOGS_SHOWN = 4
LOG_BYTES = 16 * 1024
LOG_LINES_READ = 1000  # read from each log's end to fill the tail once status lines are folded


def _tails_step(tag: str, paths: JobPaths) -> batch.Step:
    return batch.Step(tag, ["sh", "-c", _NEWEST_TAILS_SCRIPT, "sh", paths.log_dir, str(snapshot.LOG_LINES),
                            str(LOG_BYTES), str(LOGS_SHOWN), str(LOG_LINES_READ)])


def _extra_steps(records: list[JobRecord]) -> list[batch.Step]:
    """Each job's markers and log tails (tags m<i> and l<i>, by its place in `records`)."""
    steps = []
    for i, record in enumerate(records):
        paths = JobPaths(record.remote_root, record.name)
        steps.append(batch.Step(f"m{i}", recovery.markers_argv(paths)))
        steps.append(_tails_step(f"l{i}", paths))
    return steps


def _member_steps(member: JobContext) -> list[batch.Step]:
    """What a group member's status call brings beside its markers (group.look brings those)."""
    return [_tails_step("tails", member.paths)]


def _members_on_clusters(groups: list[str]) -> dict[str, list[str]]:
    """The member jobs of these groups on each cluster (not this computer: no round trip to share)."""
    found: dict[str, list[str]] = defaultdict(list)
    for name in groups:
        try:
            jobs = registry.get_group(name)["jobs"]
            for preset, job in jobs.items():
                if not load_preset(preset).is_local:
                    found[preset].append(job)
        except BraasError as error:  # its look says why (a preset gone...)
            log.debug("dashboard: group %s's members: %s", name, error)
    return found


class _MemberLooks:
    """Group members asked about in their cluster's call: each member's look steps, tagged as its own."""

    def __init__(self, jobs: Sequence[str]) -> None:
        self.contexts: list[JobContext] = []
        for job in jobs:
            try:
                self.contexts.append(job_context(job))
            except BraasError as error:  # forgotten meanwhile: its group's look says so
                log.debug("dashboard: group member %s: %s", job, error)
        self.records = [c.record for c in self.contexts]
        self._own = [group.look_steps(c, _member_steps) for c in self.contexts]
        self.steps = [dataclasses.replace(step, tag=f"g{i}_{step.tag}") for i, own in enumerate(self._own)
                      for step in own]

    async def looks(self, statuses: list[monitor.JobStatus], ahead: batch.Answers) -> dict[str, group.Look]:
        made = {}
        for i, (context, status) in enumerate(zip(self.contexts, statuses, strict=True)):
            mine = batch.Answers({step.tag: got for step in self._own[i]
                                  if (got := ahead.take(f"g{i}_{step.tag}")) is not None})
            made[context.name] = await group.look_from(context, status, mine)
        return made


def _film(name: str) -> dict[int, tuple[str, str]]:
    """Each frame of a group's film: rendered (where), held (by which cluster), or in the pool."""
    data = registry.get_group(name)
    plan = Group.from_json(data["plan"])
    film = {f: ("pool", "") for c in plan.pool for f in c}
    film |= {f: ("given up", "") for c in data.get("given_up", ()) for f in c}
    for member in plan.members:
        film |= {f: ("held", member.preset) for c in member.handed if c not in member.done for f in c}
    for member in plan.members:
        film |= {f: ("rendered", member.preset) for c in member.done for f in c}
    return film


def _tails(text: str) -> dict[str, str]:
    """Log name -> its tail, newest first, as the script printed them."""
    parts = text.split("\0")
    return {name: body for name, body in zip(parts[0::2], parts[1::2], strict=False) if name}


class Refresher:
    """The snapshot every page shows, and the one task that keeps it fresh."""

    def __init__(self, frames_root: Path, poll_max_s: float | None = None) -> None:
        self.frames_root = frames_root
        self.poll_max_s = watch.poll_max(poll_max_s)
        self.snapshot: dict[str, object] = {"jobs": [], "sessions": [], "refreshed": None, "polls": 0}
        self.version = 0
        self.polls = 0  # refreshes that asked the clusters
        self.calls: Counter[str] = Counter()  # preset -> status calls made by this refresher
        self.clients = 0
        self.refreshing = False  # a refresh is between its first remote call and its snapshot
        self.shown_between = 0  # snapshots with frames the job watcher saw land, made without a refresh
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._watched = asyncio.Event()
        self._extras: dict[str, snapshot.Extras] = {}
        self._final: set[str] = set()  # ended jobs whose markers and logs were read after they ended
        self._answers: dict[str, ClusterAnswer] = {}
        self._refused: set[str] = set()  # clusters not asked again (a refused host key or login, a preset gone)
        self._records: list[JobRecord] = []
        self._local_key: object = None
        self._busy: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.news = events.JobEvents()
        self._groups: dict[str, group.GroupStatus] = {}  # each group's newest look
        self._members: dict[str, snapshot.MemberView] = {}  # member job -> what its group's look saw
        self._moves: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=MOVES_SHOWN))
        self._groups_over: set[str] = set()  # ended groups whose members had ended too: not looked at again
        self.group_looks = 0  # group.look calls made by this refresher
        self._group_names: set[str] = set()

    # ---- pages

    async def updates(self) -> AsyncIterator[dict[str, object]]:
        """Every new snapshot, the current one first, for as long as the page listens."""
        self.clients += 1
        self._watched.set()
        seen = -1
        try:
            while True:
                async with self._changed:
                    while self.version in (seen, 0):
                        await self._changed.wait()
                    seen = self.version
                yield self.snapshot
        finally:
            self.clients -= 1
            if not self.clients:
                self._watched.clear()

    def kick(self) -> None:
        """Refresh now, and back off again from the shortest pause."""
        self._wake.set()

    async def act(self, job: str, action: str) -> dict[str, object]:
        """A button: the same core call as the CLI verb. One at a time per job (a double click acts once)."""
        if action not in ACTIONS:
            raise UsageError(f"no such action: {action!r}")
        if group.is_group(job):
            return await self._act_on_group(job, action)
        if not registry.has_job(job):
            raise UsageError(f"no job named {job!r} in the job list")
        lock = self._busy[job]
        if lock.locked():
            raise UsageError(f"{job}: an action is already running")
        async with lock:
            context = job_context(job)
            if context.record.spec.group and group.is_group(context.record.spec.group):
                raise UsageError(f"{job} is a part of the group {context.record.spec.group}: act on the group")
            if action == "cancel":
                done: dict[str, object] = {"cancelled": list(await service.cancel(context))}
            elif action == "resubmit":
                result, _plan = await recovery.resubmit_missing(context)
                done = result.to_json()
            else:
                done = (await transfer.download(context, self.frames_root / job)).to_json()
        if action == "download":
            await self._publish()
        else:
            self.kick()
        return done

    async def _act_on_group(self, name: str, action: str) -> dict[str, object]:
        """A group's button, as the CLI verbs do it (cli_group): cancel every member, or every member's
        frames into one folder. No resubmit: the group hands lost frames out again itself."""
        if action == "resubmit":
            raise UsageError(NO_GROUP_RESUBMIT.format(name=name))
        lock = self._busy[name]
        if lock.locked():
            raise UsageError(f"{name}: an action is already running")
        async with lock:
            if action == "cancel":
                done: dict[str, object] = {"cancelled": list(await group.cancel(name))}
                self._groups_over.discard(name)
            else:
                dest = self.frames_root / name
                got = await group.download(name, dest)  # every member's frames, the film's summary.json
                done = {"dest": str(dest), "downloaded": sum(g.downloaded for g in got),
                        "skipped": sum(g.skipped for g in got)}
        if action == "download":
            await self._publish()
        else:
            self.kick()
        return done

    # ---- the refresher

    async def run(self) -> None:
        local = asyncio.create_task(self._look_here())
        try:
            await self._refresh_loop()
        finally:
            local.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await local
            await self.news.close()

    async def _refresh_loop(self) -> None:
        interval = watch.POLL_MIN_S
        while True:
            if not self._watched.is_set():
                await self.news.close()  # the login nodes' job watchers too
            await self._watched.wait()  # nobody looking: nothing asked
            self._wake.clear()
            self.refreshing = True
            try:
                await self.refresh()
            except Exception:  # a bug must not stop the page: said in the log, tried again on the back-off
                log.exception("dashboard: the refresh failed")
            finally:
                self.refreshing = False
            watch.follow_events(self.news, self._report())
            pause = min(interval, group.POLL_S) if self._driving() else interval  # a group waits for its looks
            kicked = await self._pause(time.monotonic() + pause if self._live() else None)
            interval = watch.POLL_MIN_S if kicked else min(interval * 2, self.poll_max_s)

    def _live(self) -> bool:
        """Whether another refresh may tell something new: a job or session not ended, or a cluster that
        did not answer this time (a refused host key or login, a preset gone: waiting does not help)."""
        answers = self._answers.values()
        return (self._driving() or any(s.state not in TERMINAL for a in answers for s in a.statuses)
                or any(v["state"] not in TERMINAL and not v.get("error") for a in answers for v in a.sessions)
                or any(not e.lasting for a in answers for e in a.errors))

    def _driving(self) -> bool:
        """Whether a group is not over yet: this refresher hands out its frames."""
        return any(name not in self._groups_over for name in self._groups)

    async def _pause(self, deadline: float | None) -> bool:
        """Until the next refresh is due: True when kicked (a button, a new job), False when its time came
        or the job watcher said a job ended. Frames the watcher saw land are shown meanwhile."""
        while True:
            waits: dict[asyncio.Task[object], str] = {asyncio.create_task(self._wake.wait()): "kick"}
            if self.news.live():
                far = deadline if deadline is not None else time.monotonic() + 3600
                waits[asyncio.create_task(self.news.until(far))] = "news"
            left = None if deadline is None or self.news.live() else max(0.0, deadline - time.monotonic())
            done, pending = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            kinds = {waits[t] for t in done}
            if "kick" in kinds:
                return True
            if "news" not in kinds:
                return False
            (news_task,) = [t for t in done if waits[t] == "news"]
            poll, _events = news_task.result()  # type: ignore[misc]
            if poll:
                return False
            self.shown_between += 1
            await self._publish(with_frames=True)

    async def refresh(self) -> None:
        """Ask every cluster once, drive every group not over (its look asks its members' clusters),
        recover lost frames as `status` does, and show the result."""
        groups = registry.list_groups()
        records = [r for r in registry.list_jobs() if not (r.spec.group and r.spec.group in groups)]
        held = all_records()
        looked = [name for name in groups if name not in self._groups_over]
        members = _members_on_clusters(looked)
        names = list(dict.fromkeys([*(r.preset for r in records), *(s.preset for s in held), *members]))
        # One call per cluster: a group member's status and markers come in its cluster's call with the
        # other jobs there; the groups' looks (which hand frames out) then use them.
        found = await asyncio.gather(*(self._ask(name, [r for r in records if r.preset == name],
                                                 [s for s in held if s.preset == name], members.get(name, []))
                                       for name in names))
        premade = {job: look for answer in found for job, look in answer.members.items()}
        await asyncio.gather(*(self._look_group(name, premade) for name in looked))
        for gone in set(self._groups) - set(groups):  # forgotten meanwhile
            del self._groups[gone]
            self._members = {job: m for job, m in self._members.items() if not job.startswith(f"{gone}.")}
        self._group_names = set(groups)
        self._answers = dict(zip(names, found, strict=True))
        # As `status --watch`: a cluster that refused us is not asked again until the job list changes.
        self._refused |= {name for name, a in self._answers.items() if a.errors and all(e.lasting for e in a.errors)}
        self.polls += 1
        self.news.polled()
        statuses = [s for a in found for s in a.statuses]
        recoveries = await recovery.recover(statuses)
        for made in recoveries:
            if made.error:
                log.warning("dashboard: %s could not be resubmitted: %s", made.job, made.error)
        self._records = registry.list_jobs()
        await self._publish()
        if any(not r.error for r in recoveries):
            self.kick()  # a new round: its start is worth seeing soon

    async def _ask(self, name: str, records: list[JobRecord], held: list[SessionRecord],
                   member_jobs: Sequence[str] = ()) -> ClusterAnswer:
        """One cluster's jobs, markers, logs and sessions, and its group members' looks, in one remote call."""
        if name in self._refused and name in self._answers:
            return dataclasses.replace(self._answers[name], members={})  # its group members: by their group
        answer = ClusterAnswer()
        preset: Preset | list[monitor.ClusterError]
        try:
            preset = monitor.preset_or_error(name, records) if records else load_preset(name)
        except BraasError as error:
            answer.sessions = sessions.unanswered(held, str(error))
            return answer
        if isinstance(preset, list):
            answer.errors = preset
            answer.sessions = sessions.unanswered(held, str(preset[0].error))
            return answer
        wanted = [r for r in records if r.state not in TERMINAL or r.name not in self._final]
        members = _MemberLooks(member_jobs)
        steps = [*_extra_steps(wanted), *sessions.steps_for(preset.scheduler, held), *members.steps]
        ahead = batch.Answers()
        try:
            self.calls[name] += 1
            if records or members.records:
                found = await monitor.status_of_preset(preset, [*records, *members.records], steps, ahead)
                answer.statuses = found[:len(records)]
                answer.members = await members.looks(found[len(records):], ahead)
            elif steps and not preset.is_local:
                ahead = await batch.run(transport_for(preset), steps)
            if preset.is_local:  # this computer: no round trip to save, each command on its own
                transport = transport_for(preset)
                for step in steps:
                    ahead.by_tag[step.tag] = await transport.run(step.argv, check=False, timeout=120)
        except BraasError as error:
            log.info("dashboard: %s did not answer: %s", name, error)
            # A cluster with group members alone: the group's entry shows them unreachable, with the reason.
            answer.errors = [monitor.ClusterError(name, tuple(records), error)] if records or held else []
            answer.sessions = sessions.unanswered(held, str(error))
            answer.members = {job: group.unanswered(name, job, error) for job in member_jobs}
            return answer
        for i, record in enumerate(wanted):
            self._keep_extras(record, ahead, i)
        answer.sessions = sessions.views(preset.scheduler, held, ahead)
        return answer

    async def _look_group(self, name: str, looked: dict[str, group.Look]) -> None:
        """One group's look (driving it), from its members' looks made in their clusters' calls (a member
        on this computer is looked at here)."""
        seen: list[group.Look] = []
        try:
            self.group_looks += 1
            status = await group.look(name, also=_member_steps, seen=seen, looked=looked)
        except BraasError as error:
            log.info("dashboard: group %s could not be looked at: %s", name, error)
            return
        clock = time.strftime("%H:%M:%S")
        self._moves[name].extend(f"{clock} {move}" for move in status.moves)
        self._groups[name] = status
        for member in seen:
            try:
                record: JobRecord | None = registry.get_job(member.job)
            except BraasError:
                record = None
            extras = self._members[member.job].extras if member.job in self._members else snapshot.Extras()
            if member.status is not None and record is not None:
                tails = member.answers.take("tails") or await self._tails_here(record)
                timings, nodes = snapshot.timings_of(list(member.markers))
                extras = snapshot.Extras(timings, nodes, _tails(tails.stdout) if tails is not None else extras.logs)
            self._members[member.job] = snapshot.MemberView(member.preset, record, member.status, extras,
                                                            member.error)
        if status.state in TERMINAL and all(m.state in TERMINAL for m in status.members if m.job):
            self._groups_over.add(name)

    @staticmethod
    async def _tails_here(record: JobRecord) -> CommandResult | None:
        """A member on this computer: its log tails read here (no batch there); a cluster's: None (its
        batch did not bring them: the last ones stay shown)."""
        try:
            if not load_preset(record.preset).is_local:
                return None
            context = job_context(record.name)
            return await context.transport.run(_member_steps(context)[0].argv, check=False, timeout=60)
        except BraasError as error:
            log.debug("dashboard: %s's logs could not be read: %s", record.name, error)
            return None

    def _keep_extras(self, record: JobRecord, ahead: batch.Answers, i: int) -> None:
        markers = ahead.take(f"m{i}")
        tails = ahead.take(f"l{i}")
        if markers is None or tails is None:
            return  # the batch did not bring them: the last ones stay shown
        found = [m for text in markers.stdout.split("\0") if (m := recovery.parse_marker(text)) is not None]
        timings, nodes = snapshot.timings_of(found)
        self._extras[record.name] = snapshot.Extras(timings, nodes, _tails(tails.stdout))
        if record.state in TERMINAL:
            self._final.add(record.name)  # it had ended before this refresh: nothing more will change

    def _report(self) -> monitor.StatusReport:
        """The clusters' answers, group members' statuses (from their group's look) among them."""
        members = [m.status for m in self._members.values() if m.status is not None]
        return monitor.StatusReport([*(s for a in self._answers.values() for s in a.statuses), *members],
                                    [e for a in self._answers.values() for e in a.errors])

    async def _publish(self, with_frames: bool = False) -> None:
        report = self._report()
        if with_frames:
            report = watch.with_frames(report, self.news)
        self.snapshot = self._build(report)
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    def _build(self, report: monitor.StatusReport) -> dict[str, object]:
        by_job = {s.job: s for s in report.statuses}
        failed = {job: e for e in report.errors for job in e.jobs}
        jobs = []
        for record in self._records:
            if record.spec.group in self._group_names:
                continue  # a group's member: shown in its group's entry
            here = snapshot.local_frames(self.frames_root / record.name)
            extras = self._extras.get(record.name, snapshot.Extras())
            preview, tasks = "", ()
            if (status := by_job.get(record.name)) is not None:
                part = snapshot.Part(record.preset, status.state, status.frames_done, status.frames_total)
                missing: tuple[int, ...] | None = status.missing
                preview, tasks = status.preview, tuple(p.to_json() for p in status.progress)
            elif (error := failed.get(record.name)) is not None:
                part = snapshot.Part(record.preset, UNKNOWN, None, len(record.spec.frames),
                                     {"kind": error.kind, "message": str(error.error)})
                missing = None
            else:  # submitted since the last refresh: the next one tells
                part = snapshot.Part(record.preset, record.state, None, len(record.spec.frames))
                missing = None
            jobs.append(snapshot.job_view(record, [part], missing, extras, here, preview, tasks))
        return {"jobs": jobs, "groups": self._group_views(by_job),
                "sessions": [v for a in self._answers.values() for v in a.sessions],
                "refreshed": time.time(), "polls": self.polls, "frames_root": str(self.frames_root),
                "unreachable": sorted({e.preset for e in report.errors
                                       if connection_failure_kind(e.error) is not None})}

    def _group_views(self, by_job: dict[str, monitor.JobStatus]) -> list[dict[str, object]]:
        views = []
        for name, status in self._groups.items():
            try:
                film = _film(name)
            except BraasError:
                continue  # forgotten since its look
            members = []
            for member in status.members:
                if member.job and (view := self._members.get(member.job)) is not None:
                    # the frames the job watcher saw land since the look, as for jobs
                    current = by_job.get(member.job, view.status)
                    members.append(dataclasses.replace(view, status=current))
            views.append(snapshot.group_view(status, film, members, snapshot.local_frames(self.frames_root / name),
                                             list(self._moves[name])))
        return views

    async def _look_here(self) -> None:
        """This computer's side, looked at every second: a job submitted or forgotten, a session started
        or stopped (a refresh now), frames downloaded by another command (shown, nothing asked)."""
        while True:
            await asyncio.sleep(LOCAL_LOOK_S)
            try:
                records = registry.list_jobs()
                held = tuple(s.name for s in all_records())
            except (OSError, BraasError, ValueError) as error:
                log.debug("dashboard: the job list could not be read: %s", error)
                continue
            asked = (frozenset((r.name, r.rounds) for r in records), frozenset(held))
            known = (frozenset((r.name, r.rounds) for r in self._records),
                     frozenset(str(v["session"]) for a in self._answers.values() for v in a.sessions))
            if self.version and asked != known:
                self._refused.clear()
                self.kick()
                continue
            here = tuple(len(snapshot.local_frames(self.frames_root / name))
                         for name in [*(r.name for r in records), *self._groups])  # a group's one folder too
            if here != self._local_key:
                self._local_key = here
                if self.version:
                    await self._publish()
