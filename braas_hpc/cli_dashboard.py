"""`braas-hpc dashboard`: the page that shows every job and interactive session live (braas_hpc/dashboard)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli_json import document
from .core.errors import UsageError


def _dashboard_app() -> Any:
    """The dashboard's module, or a clear word on how to install what it needs."""
    from .dashboard import EXTRA_HINT

    try:
        from .dashboard import app
    except ImportError as error:
        raise UsageError(f"{EXTRA_HINT} ({error.name or error} is missing)") from None
    return app


async def cmd_dashboard(args: argparse.Namespace) -> int:
    app = _dashboard_app()
    dest = Path(args.dest) if args.dest else Path.cwd()
    board = app.make(args.port, dest, args.poll_max)
    print(document({"url": board.url, "port": board.port}, indent=None) if args.json else board.url, flush=True)
    print(f"the dashboard runs until Ctrl+C; downloads go into {dest.resolve()}/JOB; the link holds this run's "
          "secret token: do not share it", file=sys.stderr, flush=True)
    if not args.no_open:
        asyncio.get_running_loop().run_in_executor(None, webbrowser.open, board.url)
    await board.serve()
    return 0


def add_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("dashboard", cmd_dashboard, "a live page on this computer with every job and interactive session "
            "(needs the `dashboard` extra)")
    p.add_argument("--port", type=int, default=0, help="the 127.0.0.1 port (default: any free one)")
    p.add_argument("--no-open", action="store_true", help="print the link only; do not open a browser")
    p.add_argument("--dest", metavar="DIR", help="where Download puts each job's frames, as DIR/JOB (default: here)")
    p.add_argument("--poll-max", type=float, metavar="SECONDS",
                   help="longest pause between refreshes, which start at 2 s and double (default 30, or "
                        "$BRAAS_HPC_POLL_MAX)")
