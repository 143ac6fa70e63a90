"""The project's remaining allocation, from the site's own command (one remote call, parsed here).

The parsers are pure functions of the command's text. The formats were written from each site's
documentation (and, for LUMI, the public source of its `lumi-tools`), not captured on the sites:
docs/presets.md#allocation names the pages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BraasError, UsageError
from .presets import Preset
from .transport import transport_for


class AllocationError(BraasError):
    """The site's command failed, or printed nothing braas-hpc can read."""


@dataclass(frozen=True)
class Balance:
    """One line of the site's answer: a project's allocation on one resource."""

    project: str
    resource: str  # "Karolina GPU", "CPU", "polaris"; "" where the site has one pool per project
    unit: str  # one of presets.BILLING, or "core-hours (normalized)" for IT4I's legacy NCH
    remaining: float
    total: float | None = None
    used: float | None = None

    def to_json(self) -> dict[str, object]:
        return {"project": self.project, "resource": self.resource, "unit": self.unit, "remaining": self.remaining,
                "total": self.total, "used": self.used}


_NUMBER = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?$")


def _number(text: str) -> float | None:
    text = text.strip()
    return float(text.replace(",", "")) if _NUMBER.match(text) else None


def _columns(header: str, rule: str, lines: list[str]) -> list[dict[str, str]]:
    """Rows of a table laid out under a rule of dashes (`-----  ----`): each cell runs from its column's
    dashes to the next column's, so right-aligned numbers and names with spaces stay whole."""
    starts = [m.start() for m in re.finditer(r"-+", rule)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    names = [header[a:b].strip() for a, b in bounds]
    return [{name: line[a:b].strip() for name, (a, b) in zip(names, bounds, strict=True)} for line in lines]


def _table_after(lines: list[str], index: int) -> tuple[str, str, list[str]] | None:
    """The table whose header is at or after `index`: header, rule, and its rows up to a blank line."""
    for i in range(index, len(lines) - 1):
        if re.fullmatch(r"\s*-+(\s+-+)*\s*", lines[i + 1]) and lines[i].strip():
            rows = []
            for line in lines[i + 2:]:
                if not line.strip():
                    break
                rows.append(line)
            return lines[i], lines[i + 1], rows
    return None


def parse_it4ifree(text: str) -> list[Balance]:
    """IT4I's `it4ifree`: the "Projects I am participating in" table. Since node-hour accounting, one row per
    resource type (Karolina CPU, Karolina GPU, ...; a project's further rows leave PID blank), Free in
    node-hours; older projects show Legacy NCH rows, or the older table with no resource type at all."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "participating in" in line.lower()), None)
    table = _table_after(lines, start + 1) if start is not None else None
    if table is None:
        raise AllocationError(_unreadable("it4ifree", text))
    balances, project = [], ""
    for row in _columns(*table):
        project = row.get("PID") or project
        resource = row.get("Resource type", "")
        free = _number(row.get("Free", ""))
        if not project or free is None:
            continue
        legacy = not resource or "nch" in resource.lower()
        balances.append(Balance(project, resource, "core-hours (normalized)" if legacy else "node-hours", free,
                                _number(row.get("Total", "")), _number(row.get("Used", row.get("Used NCHs", "")))))
    return balances


_LUMI_CELL = re.compile(r"^\s*([0-9.]+)\s*/\s*([0-9.]+)")


def parse_lumi_allocations(text: str) -> list[Balance]:
    """LUMI's `lumi-allocations`: `Project | CPU (used/allocated) | GPU (used/allocated) | Storage ...`, each
    cell `used/allocated (p%) unit`, or N/A where the project has none of it."""
    balances = []
    header = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells[0].lower() == "project":
            header = True
            continue
        if not header or len(cells) < 3 or not cells[0]:
            continue
        for resource, unit, cell in (("CPU", "core-hours", cells[1]), ("GPU", "gpu-hours", cells[2])):
            found = _LUMI_CELL.match(cell)
            if found:
                used, total = float(found.group(1)), float(found.group(2))
                balances.append(Balance(cells[0], resource, unit, total - used, total, used))
    if not header:
        raise AllocationError(_unreadable("lumi-allocations", text))
    return balances


def parse_saldo(text: str) -> list[Balance]:
    """CINECA's `saldo -b`: after a two-line header, one row per project account: account, start, end (dates
    as YYYYMMDD), total and localCluster Consumed in local core-hours, then totals and month figures."""
    lines = text.splitlines()
    if not any(line.split()[:1] == ["account"] for line in lines):
        raise AllocationError(_unreadable("saldo -b", text))
    balances = []
    for line in lines:
        words = line.split()
        if len(words) >= 5 and re.fullmatch(r"[0-9]{8}", words[1]) and re.fullmatch(r"[0-9]{8}", words[2]):
            total, used = _number(words[3]), _number(words[4])
            if total is not None and used is not None:
                balances.append(Balance(words[0], "", "core-hours", total - used, total, used))
    return balances


def parse_sbank(text: str) -> list[Balance]:
    """ALCF's `sbank-list-allocations`: a table with Resource, Project, Charged and Available Balance columns
    (node-hours, with thousands separators); some sites add Allocation and Suballocation columns."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "Available Balance" in line), None)
    table = _table_after(lines, start) if start is not None else None
    if table is None:
        raise AllocationError(_unreadable("sbank-list-allocations", text))
    balances = []
    for row in _columns(*table):
        remaining = _number(row.get("Available Balance", ""))
        if row.get("Project") and remaining is not None:
            balances.append(Balance(row["Project"], row.get("Resource", ""), "node-hours", remaining, None,
                                    _number(row.get("Charged", ""))))
    return balances


PARSERS = {"it4ifree": parse_it4ifree, "lumi-allocations": parse_lumi_allocations, "saldo": parse_saldo,
           "sbank": parse_sbank}


def _unreadable(command: str, text: str) -> str:
    shown = text.strip()[:400] or "(nothing)"
    return f"could not read the answer of {command}; it printed:\n{shown}"


def choose(balances: list[Balance], account: str, hints: tuple[str, ...]) -> Balance | None:
    """The line for the job's project; where it has several resources, the one whose name holds most of
    `hints` (the preset's name, the partition's kind: "karolina", "gpu"). Several equally good lines of one
    unit (ALCF's suballocations) add up."""
    mine = [b for b in balances if b.project.lower() == account.lower()]
    if not mine:
        return None

    def score(b: Balance) -> int:
        return sum(h.lower() in b.resource.lower() for h in hints if h) - ("nch" in b.resource.lower())

    best = max(score(b) for b in mine)
    chosen = [b for b in mine if score(b) == best]
    if len(chosen) == 1:
        return chosen[0]
    if len({(b.resource, b.unit) for b in chosen}) == 1 or len({b.unit for b in chosen}) == 1:
        first = chosen[0]
        totals = [b.total for b in chosen]
        return Balance(first.project, first.resource, first.unit, sum(b.remaining for b in chosen),
                       sum(t for t in totals if t is not None) if all(t is not None for t in totals) else None,
                       None)
    return chosen[0]


@dataclass(frozen=True)
class Allocation:
    preset: str
    account: str
    command: tuple[str, ...]
    balances: tuple[Balance, ...]  # every line the site printed
    chosen: Balance | None  # the job's project and resource

    def to_json(self) -> dict[str, object]:
        return {"preset": self.preset, "account": self.account, "command": list(self.command),
                "balances": [b.to_json() for b in self.balances],
                "remaining": self.chosen.to_json() if self.chosen else None}


def command_for(preset: Preset, account: str) -> tuple[str, ...]:
    if not preset.allocation_command:
        raise UsageError(f"preset {preset.name} names no command that prints the allocation's balance "
                         "(allocation_command); the site's own portal shows it")
    return tuple(word.replace("{account}", account) for word in preset.allocation_command)


async def allocation(preset: Preset, account: str = "", kind: str = "cpu") -> Allocation:
    """The site's balance of `account` (default the preset's) for a job of `kind` ("cpu"/"gpu")."""
    account = account or preset.account
    argv = command_for(preset, account)
    done = await transport_for(preset).run(list(argv), timeout=60, check=False)
    if done.exit_status == 127:
        raise AllocationError(f"{argv[0]} is not on {preset.host}'s PATH; the preset's allocation_command names it")
    if done.exit_status != 0:
        raise AllocationError(f"{' '.join(argv)} failed (exit status {done.exit_status}): "
                              f"{(done.stderr or done.stdout).strip()[:400]}")
    balances = PARSERS[preset.allocation_format](done.stdout)
    chosen = choose(balances, account, (preset.name, kind)) if account else None
    return Allocation(preset.name, account, argv, tuple(balances), chosen)
