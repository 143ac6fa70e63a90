"""The allocation parsers, on outputs written from each site's documentation (tests/data/allocation; not
captured on the sites), and the choice of the job's line among them."""

from __future__ import annotations

import pytest

from braas_hpc.core.allocation import (
    AllocationError,
    Balance,
    choose,
    parse_it4ifree,
    parse_lumi_allocations,
    parse_saldo,
    parse_sbank,
)
from tests.helpers import REPO

DATA = REPO / "tests" / "data" / "allocation"


def _read(name: str) -> str:
    return (DATA / name).read_text()


def test_it4ifree_reads_every_resource_row_and_the_continuation_rows_project() -> None:
    rows = parse_it4ifree(_read("it4ifree.txt"))
    assert [(b.project, b.resource, b.remaining, b.unit) for b in rows] == [
        ("OPEN-33-12", "Karolina CPU", 1688, "node-hours"),
        ("OPEN-33-12", "Karolina GPU", 479.5, "node-hours"),
        ("DD-24-7", "Barbora CPU", 50, "node-hours"),
        ("DD-24-7", "Legacy NCH", 100, "core-hours (normalized)")]
    assert rows[1].total == 600 and rows[1].used == 120.5
    # The PI table below (Login, Usage) is not read as balances.
    assert not any(b.resource == "Karolina CPU" and b.remaining in (772, 40) for b in rows)


def test_it4ifree_older_table_without_resource_type() -> None:
    (row,) = parse_it4ifree(_read("it4ifree-legacy.txt"))
    assert (row.project, row.resource, row.remaining, row.total, row.unit) == (
        "OPEN-11-21", "", 595887, 800000, "core-hours (normalized)")


def test_lumi_allocations_cpu_and_gpu_pools_and_na() -> None:
    rows = parse_lumi_allocations(_read("lumi-allocations.txt"))
    assert [(b.project, b.resource, b.remaining, b.unit) for b in rows] == [
        ("project_465001234", "CPU", 200000 - 48211, "core-hours"),
        ("project_465001234", "GPU", 10000 - 3120, "gpu-hours"),
        ("project_462000777", "GPU", 500 - 75.5, "gpu-hours")]


def test_saldo_remaining_is_total_less_the_local_clusters_consumption() -> None:
    rows = parse_saldo(_read("saldo.txt"))
    assert [(b.project, b.remaining, b.total, b.used) for b in rows] == [
        ("IscrB_RENDER", 120000 - 30250, 120000, 30250), ("EUHPC_D12_034", 0, 50000, 50000)]


def test_sbank_reads_thousands_separators_and_stops_before_totals() -> None:
    rows = parse_sbank(_read("sbank.txt"))
    assert [(b.project, b.resource, b.remaining, b.used) for b in rows] == [
        ("RenderFarmX", "polaris", 16519.5, 3480.5), ("RenderFarmX", "aurora", 1860.0, 140.0)]


def test_sbank_suballocations_of_one_resource_add_up() -> None:
    rows = parse_sbank(_read("sbank-suballocations.txt"))
    assert len(rows) == 3
    chosen = choose(rows, "cyclesart", ("polaris", "gpu"))
    assert chosen is not None and chosen.remaining == 512.5 and chosen.resource == "polaris"


def test_choose_takes_the_presets_cluster_and_kind() -> None:
    rows = parse_it4ifree(_read("it4ifree.txt"))
    assert choose(rows, "OPEN-33-12", ("karolina", "gpu")).remaining == 479.5  # type: ignore[union-attr]
    assert choose(rows, "open-33-12", ("karolina", "cpu")).remaining == 1688  # type: ignore[union-attr]
    assert choose(rows, "OPEN-99-99", ("karolina", "cpu")) is None
    # Node-hours are preferred to the legacy NCH pool of the same project.
    assert choose(rows, "DD-24-7", ("barbora", "cpu")).resource == "Barbora CPU"  # type: ignore[union-attr]
    lumi = parse_lumi_allocations(_read("lumi-allocations.txt"))
    assert choose(lumi, "project_465001234", ("lumi", "gpu")).unit == "gpu-hours"  # type: ignore[union-attr]
    sbank = parse_sbank(_read("sbank.txt"))
    assert choose(sbank, "RenderFarmX", ("aurora", "gpu")).remaining == 1860.0  # type: ignore[union-attr]


def test_choose_does_not_add_different_units_and_prefers_node_hours_to_legacy() -> None:
    rows = [Balance("p", "x", "core-hours", 5.0), Balance("p", "y", "gpu-hours", 7.0)]
    assert choose(rows, "p", ()).remaining == 5.0  # type: ignore[union-attr]
    legacy_first = [Balance("p", "Legacy NCH", "core-hours (normalized)", 9.0), Balance("p", "Site", "node-hours", 3.0)]
    assert choose(legacy_first, "p", ()).unit == "node-hours"  # type: ignore[union-attr]


@pytest.mark.parametrize("parser", [parse_it4ifree, parse_lumi_allocations, parse_saldo, parse_sbank])
def test_an_unreadable_answer_says_what_was_printed(parser) -> None:  # noqa: ANN001
    with pytest.raises(AllocationError, match="it printed:\n-bash: command not found"):
        parser("-bash: command not found")
