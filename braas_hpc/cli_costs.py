"""The CLI's face of estimates and allocations: `submit --estimate`, the estimate a `submit` keeps with
the job and its warning, `allocation PRESET`, and the estimate beside the actual in `status`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from .core import costs, monitor, service
from .core.allocation import allocation
from .core.display import plain
from .core.presets import load_preset
from .core.spec import SubmitRequest

log = logging.getLogger(__name__)
PrintJson = Callable[[dict[str, object]], None]


async def submit_estimate(args: argparse.Namespace, request: SubmitRequest, print_json: PrintJson) -> int:
    """`submit --estimate`: the estimate and the balance, nothing submitted. A value only the submission
    needs (an account, a workdir) may still be missing, as for --dry-run."""
    built = service.build_spec(request, dry_run=True)
    found = await costs.for_request(request, built, calibrate=True)
    if args.json:
        print_json({"job": built[0].name, "preset": built[1].name, **found.to_json()})
        return 0
    for line in found.lines():
        print(plain(line))
    for warning in found.warnings:
        print(plain(f"warning: {warning}"))
    return 0


async def before_submit(request: SubmitRequest) -> tuple[tuple, costs.Costs]:
    """The spec, and its costs for a Submit (no render here; the cluster asked only for the allocation)."""
    built = service.build_spec(request)
    found = await costs.for_request(request, built)
    for note in found.notes:
        log.info("%s", note)
    return built, found


async def cmd_allocation(args: argparse.Namespace, print_json: PrintJson) -> int:
    preset = load_preset(args.preset)
    found = await allocation(preset, args.account or "", "gpu" if args.gpu else "cpu")
    if args.json:
        print_json(found.to_json())
        return 0
    for b in found.balances:
        chosen = found.chosen is not None and (b.project, b.resource) == (found.chosen.project, found.chosen.resource)
        mark = "*" if chosen else " "
        total = f" of {b.total:.6g}" if b.total is not None else ""
        print(plain(f"{mark} {b.project}  {b.resource or '-'}  {b.remaining:.6g}{total} {b.unit} left"))
    if not found.balances:
        print(plain(f"{' '.join(found.command)} lists no allocation"))
    elif found.account and found.chosen is None:
        print(plain(f"none of these is {found.account} (the preset's account, or --account)"))
    return 0


async def estimates(report: monitor.StatusReport) -> dict[str, dict]:
    """The estimates of the jobs shown, with the actual of those that ended (core.costs.settle)."""
    return await costs.settle([(s.job, s.preset, s.summary) for s in report.statuses])


def add_parser(add: Callable[..., argparse.ArgumentParser], handler: Callable) -> None:
    p = add("allocation", handler, "the project's remaining allocation, from the site's own command")
    p.add_argument("preset", metavar="PRESET")
    p.add_argument("--account", help="the project (default: the preset's)")
    p.add_argument("--gpu", action="store_true", help="the GPU allocation, where the site keeps one apart")
