"""The house: the core in floors, imports only down or across a floor, no import circle in the product.

Floors of `braas_hpc.core`, from the bottom:
- basics: errors, paths, frames, what reads a .blend or finds Blender on this computer;
- model: a job's spec and its files (a split still's parts), presets, the registry, packing;
- reach: how a cluster is reached and asked (SSH transports, schedulers);
- cluster: what lives on a cluster for the user (the tree, workdir, store, scripts, Blender);
- verbs: what the CLI and the add-ons call (submit, status, recovery, watch, download, logs, install, probe).
A module may import from its own floor or below, never above; a new module must be given a floor here.
Imports are read from the source (module level, under TYPE_CHECKING and inside functions alike).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

FLOORS: dict[str, tuple[str, ...]] = {
    "basics": ("core", "errors", "paths", "display", "progress", "markers", "hostnames", "frames", "local_blender",
               "scene_settings", "notify"),
    "model": ("jobs", "split", "presets", "user_presets", "registry", "spec", "intents", "packing", "blender_version"),
    "reach": ("transport", "schedulers", "batch"),  # with every module inside them
    "cluster": ("tree", "workdir", "store", "scripts", "submit_exchange", "job_files", "events", "cluster_blender",
                "context", "planning", "rounds", "estimate", "calibration", "allocation", "live", "fanout"),
    "verbs": ("service", "delivery", "monitor", "recovery", "watch", "transfer", "install", "logs", "probe",
              "readiness", "costs", "video", "job_end", "group_state", "group"),
}
PRODUCT = ("braas_hpc", "braas_hpc_interactive", "cluster_scripts")
# Loaded only when chosen: each back end pulls in its own SSH library.
LAZY_PLUGINS = {"braas_hpc.core.transport": {"braas_hpc.core.transport.asyncssh_", "braas_hpc.core.transport.paramiko_",
                                             "braas_hpc.core.transport.openssh"}}


def module_files() -> dict[str, Path]:
    found = {}
    for package in PRODUCT:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def imports_of(name: str) -> Iterator[tuple[str, bool]]:
    """(product module imported, whether the import is inside a function) for every import in `name`."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from . import x` names a module when x is one, else a name inside `base`.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rpartition(".")[0]  # `a.b.name` -> the module a.b
            if target in MODULES and target != name:
                yield target, id(node) not in top_level and not _under_type_checking(tree, node)


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test) and node in ast.walk(top)
               for top in tree.body)


def floor_of(module: str) -> int | None:
    if module == "braas_hpc.core":
        return 0
    if not module.startswith("braas_hpc.core."):
        return None
    first = module.split(".")[2]
    for level, names in enumerate(FLOORS.values()):
        if first in names:
            return level
    raise AssertionError(f"{module} is on no floor: give it one in tests/unit/test_house.py")


def test_every_core_module_has_a_floor_and_imports_only_down() -> None:
    names = list(FLOORS)
    upward = []
    for module in MODULES:
        mine = floor_of(module)
        if mine is None:
            continue
        for target, _late in imports_of(module):
            theirs = floor_of(target)
            if theirs is not None and theirs > mine:
                upward.append(f"{module} ({names[mine]}) imports {target} ({names[theirs]})")
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_the_core_imports_nothing_late_but_its_ssh_back_ends() -> None:
    late = [f"{module} imports {target} inside a function"
            for module in MODULES if module.startswith("braas_hpc.core")
            for target, is_late in imports_of(module)
            if is_late and target not in LAZY_PLUGINS.get(module, set())]
    assert not late, "\n".join(late)


def test_no_import_circle_in_the_product() -> None:
    graph = {module: {target for target, _ in imports_of(module)} for module in MODULES}
    circles = strongly_connected(graph)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in circles)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Groups of two or more modules that import each other, directly or around a ring (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(group)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    # The checks themselves can fail: a ring and a mutual pair are found, a chain is not.
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [sorted(c) for c in strongly_connected(ring)] == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
    assert floor_of("braas_hpc.core.service") > floor_of("braas_hpc.core.jobs")  # type: ignore[operator]
    assert ("braas_hpc.core.jobs", False) in set(imports_of("braas_hpc.core.service"))
