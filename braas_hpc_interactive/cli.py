"""`braas-hpc interactive start|run|stop|tunnel|status`: the interactive verbs of the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from braas_hpc.cli_json import document
from braas_hpc.core.errors import UsageError
from braas_hpc.core.presets import SSH_BACKENDS
from braas_hpc.core.transport import quote_command

from .core import launch, live, session
from .core.records import all_records, load_record
from .core.tunnel import CHECK_S, TCP_WARNING, UNIX_SOCKETS, for_session


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def cmd_start(args: argparse.Namespace) -> int:
    record = await session.start(args.preset, args.walltime, args.gpu, args.blendfile or "", args.ssh_backend,
                                 scene=args.scene)
    _say(f"submitted session {record.name} as job {record.job_id}; waiting for a node")
    node = await session.wait_ready(record, timeout=args.timeout)
    if args.json:
        print(document({"session": record.name, "job": record.job_id, "node": node, "dir": record.paths.dir}))
    else:
        _say(f"session {record.name} holds {node} (job {record.job_id}, {record.walltime_min} min)")
        print(record.name)
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("give the command after --, e.g. `braas-hpc interactive run SESSION -- hostname`")
    record = load_record(args.session)
    await session.run(record, argv)
    if args.detach:
        _say(f"started in {record.name}; follow with `braas-hpc interactive status`")
        return 0
    async for line in session.follow(record):
        print(line.text, file=sys.stderr if line.stderr else sys.stdout, flush=True)
    status = await session.exit_status(record)
    return 0 if status == 0 else 1


async def cmd_serve(args: argparse.Namespace) -> int:
    kind = {"builtin": launch.BUILTIN, "blenderphi": launch.BLENDERPHI}[args.type]
    launch.require_open_port_ok(kind, args.open_port)  # before anything is read or sent
    record = load_record(args.session)
    argv = await session.start_server(record, kind, blendfile=args.blendfile or "",
                                      blenderphi=args.blenderphi or launch.BLENDERPHI_DEFAULT,
                                      open_port_ok=args.open_port)
    conn = await session.connection(record)
    _say(f"{record.name}: {args.type} server on {conn.host}:{conn.port} ({quote_command(argv)})")
    _say(f"reach it with `braas-hpc interactive tunnel {record.name}`; end it with `braas-hpc interactive stop`")
    return 0


async def cmd_stop(args: argparse.Namespace) -> int:
    record = load_record(args.session)
    result = await session.stop(record, keep_job=args.keep_job)
    _say(f"{record.name}: command {result}" + ("" if args.keep_job else f"; job {record.job_id} cancelled"))
    return 0


async def cmd_tunnel(args: argparse.Namespace) -> int:
    record = load_record(args.session)
    conn = await session.connection(record)
    tunnel = for_session(record.preset, record.ssh_backend, conn.host, conn.port, args.port, args.check,
                         on_event=_say, tcp=args.tcp, name=record.name)
    port = await tunnel.open()
    if tunnel.local_path is None:
        _say(f"warning: {TCP_WARNING}" + ("" if UNIX_SOCKETS else " (no Unix sockets on this system)"))
    print(document({"local_port": port, "local_path": tunnel.local_path, "host": conn.host, "port": conn.port},
                   indent=None) if args.json else tunnel.local_end, flush=True)
    live.publish(record.name, tunnel=tunnel.local_end)  # for `braas-hpc dashboard`
    try:
        while True:  # until Ctrl-C; the watchdog re-opens the tunnel after a drop
            await asyncio.sleep(3600)
    finally:
        live.clear(record.name)
        await tunnel.close()


async def cmd_status(args: argparse.Namespace) -> int:
    records = [load_record(args.session)] if args.session else all_records()
    states = [await session.state(r) for r in records]
    if args.json:
        print(document({"sessions": [{"session": s.record.name, "preset": s.record.preset, "job": s.record.job_id,
                                      "state": s.job_state, "node": s.node, "command": s.command, "port": s.port}
                                     for s in states]}))
    else:
        for s in states:
            print(session.describe(s))
        if not states:
            _say("no interactive sessions")
    return 0


def add_interactive(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `interactive` command group to the main parser's subcommands."""
    top = sub.add_parser("interactive", help="interactive jobs on compute nodes, their commands and tunnels",
                         description="interactive jobs on compute nodes, their commands and tunnels")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, handler: object, help_: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = add("start", cmd_start, "submit a job that holds a compute node; prints the session name last")
    p.add_argument("preset", metavar="PRESET")
    p.add_argument("--walltime", type=int, metavar="MIN", help="minutes to hold the node")
    p.add_argument("--gpu", action="store_true", help="hold a GPU node (the preset's GPU partition)")
    p.add_argument("--blendfile", metavar="REMOTE_PATH", help="the scene on the cluster, written to `blendfile`")
    p.add_argument("--scene", type=Path, metavar="LOCAL.blend",
                   help="a local scene: packed and uploaded for the session (instead of --blendfile)")
    p.add_argument("--timeout", type=float, default=session.READY_TIMEOUT_S, metavar="S",
                   help="how long to wait for the node")
    p.add_argument("--ssh-backend", choices=SSH_BACKENDS, help="override the preset's SSH back end")

    p = add("run", cmd_run, "start a command inside the session's job and stream its output")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.add_argument("--detach", action="store_true", help="return once it runs")

    p = add("serve", cmd_serve, "start a render server in the session: the built-in Cycles server or BlenderPhi")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--type", choices=("builtin", "blenderphi"), default="builtin",
                   help="builtin: stock Blender on the node with a token (default); blenderphi: BlenderPhi")
    p.add_argument("--blendfile", metavar="REMOTE_PATH", help="the scene on the cluster (default: the session's)")
    p.add_argument("--blenderphi", metavar="REMOTE_PATH", help=f"BlenderPhi's blender (default "
                   f"{launch.BLENDERPHI_DEFAULT})")
    p.add_argument("--open-port", action="store_true",
                   help="start BlenderPhi although its port is open to every user and machine that can reach "
                   "the node (it has no authentication); required with --type blenderphi")

    p = add("stop", cmd_stop, "end the session's command (its process group only) and the job")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--keep-job", action="store_true", help="keep holding the node for another run")

    p = add("tunnel", cmd_tunnel, "forward a private local Unix socket (a 127.0.0.1 port on Windows, or with "
            "--tcp/--port) to the command's port on the node; prints the socket's path or the address")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--tcp", action="store_true", help="a 127.0.0.1 port instead of the socket (for a browser; every "
                   "local user can connect to it)")
    p.add_argument("--port", type=int, metavar="N", help="this 127.0.0.1 port (implies --tcp)")
    p.add_argument("--check", type=float, default=CHECK_S, metavar="S", help="watchdog interval")

    p = add("status", cmd_status, "the sessions this computer knows, with job and command state")
    p.add_argument("session", nargs="?", metavar="SESSION")
