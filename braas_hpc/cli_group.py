"""The CLI's face of a job over several clusters (core.group): `submit --preset a,b[,local]` makes one,
and status, wait, cancel, download and logs given its name act on every member."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from .core import group, job_end, logs, transfer
from .core.display import plain
from .core.errors import UsageError
from .core.schedulers.base import COMPLETED, TERMINAL
from .core.spec import SubmitRequest
from .core.transport import pool
from .prompts import can_ask


def presets_of(value: str) -> list[str]:
    """The presets of `--preset`: one name, or several separated by commas (a job over several clusters)."""
    return [p.strip() for p in value.split(",") if p.strip()]


def lines(status: group.GroupStatus | dict) -> list[str]:
    """A group's lines, from its status or its `status (group)` document."""
    shown = status.to_json() if isinstance(status, group.GroupStatus) else status
    out = [f"{shown['job']}  {shown['state']}  frames {shown['frames_done']}/{shown['frames_total']}"
           + (f"  ({shown['pool']} not handed out yet)" if shown["pool"] else "")]
    for m in shown["members"]:
        pace = (f"{m['seconds_per_frame']:.1f} s/frame, {m['slots']} at once" if m["seconds_per_frame"]
                else "pace not measured yet")
        out.append(f"  {m['preset']:<12} {m['state']:<11} rendered {m['frames_done']}, holds {m['frames_held']}  "
                   f"({pace})" + (f"  job {m['job']}" if m["job"] else "")
                   + (f"  not answering: {m['error']}" if m.get("error") else ""))
    out += [f"  {move}" for move in shown["moves"]]
    if shown["missing"]:
        out.append(f"  given up: frames {shown['missing']}")
    return out


async def submit(args: argparse.Namespace, request: SubmitRequest, err: Console,
                 print_json: Callable[[dict[str, object]], None]) -> int:
    status, results, warnings = await group.submit(request, presets_of(args.preset))
    for warning in warnings:
        err.print(f"warning: {plain(warning)}", highlight=False)
    if args.json:
        print_json({**status.to_json(), "submissions": [r.to_json() for r in results], "warnings": warnings})
        return 0
    for r in results:
        print(f"{r.preset}: frames {r.frames} as {r.tasks} array task(s), scheduler id {', '.join(r.scheduler_ids)}")
    rest = (f"the rest ({status.pool} frames) is handed out as the clusters render" if status.pool else
            "every frame is handed out; chunks a cluster has not started move to a faster one")
    print(f"{rest}: keep `braas-hpc wait {status.name}` (or the dashboard) running, or look with "
          f"`braas-hpc status {status.name}`")
    print(status.name)
    return 0


async def status(args: argparse.Namespace, print_json: Callable[[dict[str, object]], None]) -> int:
    found = [await group.look(name, ask_host_keys=can_ask(pool.prompts)) for name in args.jobs]
    if args.json:
        print_json({"jobs": [s.to_json() for s in found]})
    else:
        print("\n".join(line for s in found for line in lines(s)))
    return 0


async def watch(args: argparse.Namespace, out: Console) -> int:
    """`status --watch GROUP...`: the groups' lines whenever they change, each look driving them, until all ended."""
    shown: list[str] = []
    while True:
        found = [await group.look(name, ask_host_keys=can_ask(pool.prompts)) for name in args.jobs]
        now = [line for s in found for line in lines(s)]
        if now != shown:
            out.print(plain("\n".join(now)), highlight=False)
            shown = now
        if all(s.state in TERMINAL for s in found):
            return 0
        await asyncio.sleep(args.poll_max or group.POLL_S)


async def wait(args: argparse.Namespace, err: Console, print_json: Callable[[dict[str, object]], None]) -> int:
    """Drive the group to its end; with --auto-download its frames come as they land (every cluster's into
    one folder), with --on-done the command runs once at the end (BRAAS_* as for a job; BRAAS_PRESET lists
    the clusters, BRAAS_CLUSTER_DIR and BRAAS_PREVIEW are empty: there are several)."""
    if args.download_dir and not args.auto_download:
        raise UsageError("--download-dir goes with --auto-download")
    on_done = job_end.hook_argv(args.on_done) if args.on_done is not None else None
    folder = (Path(args.download_dir) if args.download_dir else Path.cwd()) / args.job if args.auto_download else None
    if folder is not None:
        transfer.check_dest(folder.parent)
    fetched = [0]

    async def each(status: group.GroupStatus) -> None:
        if not args.json:
            for move in status.moves:
                err.print(plain(move), highlight=False)
        if folder is not None and (status.frames_done > fetched[0] or status.state in TERMINAL):
            got = sum(g.downloaded for g in await group.download(args.job, folder))
            fetched[0] = status.frames_done
            if got and not args.json:
                err.print(plain(f"{args.job}: {got} new frame(s) in {folder}"), highlight=False)

    final = await group.wait(args.job, poll_s=args.poll_max or group.POLL_S, timeout_s=args.timeout, on_status=each,
                             ask_host_keys=can_ask(pool.prompts))
    if on_done is not None:
        env = job_end.env_of(final.name, final.state, ",".join(m.preset for m in final.members), final.frames_done,
                             final.frames_total, final.missing, folder)
        if problem := await job_end.run_hook(on_done, env):
            err.print(plain(f"{final.name}: {problem}"), highlight=False)
    if args.json:
        print_json(final.to_json())
    else:
        print("\n".join(lines(final)))
    return 0 if final.state == COMPLETED else 1


async def cancel(args: argparse.Namespace, print_json: Callable[[dict[str, object]], None]) -> int:
    ids = await group.cancel(args.job)
    if args.json:
        print_json({"job": args.job, "cancelled": list(ids)})
    else:
        print(f"cancelled {args.job} on every cluster (scheduler ids {', '.join(ids) or 'none left'})")
    return 0


async def download(args: argparse.Namespace, print_json: Callable[[dict[str, object]], None]) -> int:
    """Every member's frames into one folder."""
    dest = Path(args.dest) if args.dest else Path.cwd() / args.job
    got = await group.download(args.job, dest)
    downloaded, skipped = sum(g.downloaded for g in got), sum(g.skipped for g in got)
    if args.json:
        print_json({"job": args.job, "dest": str(dest), "downloaded": downloaded, "skipped": skipped,
                    "summary": str(dest / "summary.json"), "members": [g.to_json() for g in got]})
    else:
        print(f"downloaded {downloaded} frame(s), {skipped} already here, into {dest} (with summary.json: "
              "what each cluster rendered)")
    return 0


async def show_logs(args: argparse.Namespace, print_json: Callable[[dict[str, object]], None]) -> int:
    jobs = group.members(args.job)
    found = [await logs.job_logs(job, task=args.task, lines=args.lines) for job in jobs]
    if args.json:
        print_json({"job": args.job, "members": [f.to_json() for f in found]})
    else:
        for job, f in zip(jobs, found, strict=True):
            print(f"===== {job.preset.name} ({job.name})")
            print(plain(f.text()))
    return 0
