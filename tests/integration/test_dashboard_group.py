"""The dashboard with a group (one film over several clusters, core.group) on the test cluster, in Debian's
chromium: the group is one entry with a bar per cluster that moves as frames render; the dashboard alone
drives it to COMPLETED (no `braas-hpc wait` runs); each refresh asks each member's cluster once (the
group's look), and the member jobs are never asked about again in the same refresh; Download brings every
member's frames into one folder; Cancel on a second group cancels it on every cluster.

The dashboard runs in a thread of this process (tests/dashboard_server.py), so each command it runs on a
cluster is counted (Transport.run, the one door to a cluster), with the refresh it belongs to."""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from braas_hpc.core import group, registry
from braas_hpc.core.transport.base import Transport
from braas_hpc.dashboard.refresher import Refresher
from tests.conftest import run_cli
from tests.dashboard_server import ensure_chromium, serving
from tests.helpers import eventually, make_sample
from tests.integration.test_group import FILM, two_clusters  # noqa: F401 - the presets tbfast and tbslow

FRAMES = 10
SCREENSHOT_ENV = "BRAAS_DASHBOARD_GROUP_SCREENSHOT"  # a path: the page with the group rendering is saved there


@dataclass
class Call:
    remote: bool  # to a cluster (else this computer)
    refresh: int | None  # the refresh it was made in (None: between refreshes, a button)
    text: str


@dataclass
class Counted:
    calls: list[Call] = field(default_factory=list)
    refresher: Refresher | None = None  # set once the dashboard is made


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counted:
    """Every command the dashboard's thread runs: on a cluster or here, during which refresh, what it says."""
    found = Counted()
    real_run = Transport.run

    async def run(self: Transport, argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if threading.current_thread().name == "dashboard":
            refresher = found.refresher
            found.calls.append(Call(getattr(self, "target", None) is not None,
                                    refresher.polls + 1 if refresher and refresher.refreshing else None,
                                    " ".join(map(str, argv))))
        return await real_run(self, argv, **kwargs)

    monkeypatch.setattr(Transport, "run", run)
    return found


def _submit(scene: Path, presets: str, frames: str) -> dict:
    done = run_cli("submit", str(scene), "--preset", presets, "--frames", frames, *FILM, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _bar(page, name: str, preset: str) -> str:  # noqa: ANN001
    return page.locator(f'article[data-group="{name}"] .bar.part[data-preset="{preset}"] span').text_content(
        timeout=10_000) or ""


def _rendered(label: str) -> int:
    found = re.search(r"rendered (\d+)", label)
    assert found, label
    return int(found.group(1))


def _sort_calls(asked: list[Call], group_members: tuple[str, str], plain: str) -> tuple:
    """The refreshes' calls to a cluster by kind: each member's looks, the ordinary job's status calls (with
    the first member in the same call or not), the film-end cancels, by refresh."""
    refreshes = sorted({c.refresh for c in asked})
    looks: Counter[tuple[int | None, str]] = Counter()
    plain_asked: Counter[tuple[int | None, bool]] = Counter()  # (refresh, with the fast member) -> calls
    kinds: dict[int | None, Counter[str]] = {r: Counter() for r in refreshes}
    tidied: Counter[str] = Counter()
    for c in asked:
        # a job dir is named with a slash after it, or (a cancel's flag step) as an argument
        named = [m for m in group_members if re.search(f"/jobs/{re.escape(m)}(?![\\w.-])", c.text)]
        if "BRAAS_BATCH_SEEN" in c.text and "step read_markers " in c.text:
            kinds[c.refresh]["status follow-up"] += 1  # core.monitor's markers of tasks no answer lists
        elif "BRAAS_BATCH_SEEN" in c.text and "step cancel " in c.text:
            # The film done: what a member still queued (chunks that moved) is cancelled, once.
            assert len(named) == 1 and "all_markers" not in c.text, c.text[-300:]
            tidied[named[0]] += 1
            kinds[c.refresh]["tidy"] += 1
        elif "BRAAS_BATCH_SEEN" in c.text:
            if re.search(f"/jobs/{re.escape(plain)}(?![\\w.-])", c.text):
                plain_asked[(c.refresh, group_members[0] in named)] += 1
            if named or "all_markers" in c.text:
                assert "all_markers" in c.text and len(named) == 1, f"a member asked about twice: {c.text[-300:]}"
                looks[(c.refresh, named[0])] += 1
            kinds[c.refresh]["status"] += 1
        elif "submit_helper.py" in c.text or "/claims " in c.text:
            kinds[c.refresh]["hand-out"] += 1
        else:  # core.monitor's own follow-ups when a round ends (the queue, its tasks' markers)
            kinds[c.refresh]["status follow-up"] += 1
    return refreshes, looks, plain_asked, kinds, tidied


def test_the_page_drives_a_group_and_cancels_another(two_clusters: tuple[str, str], testbed, remote,  # noqa: ANN001, F811
                                                     counted: Counted, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    fast, slow = two_clusters
    chromium = ensure_chromium()
    scene = make_sample(tmp_path / "scene")
    submitted = _submit(scene, f"{fast},{slow},local", f"1-{FRAMES}")
    film = submitted["job"]
    assert submitted["pool"] > 0  # the rest waits for a driver: here only the dashboard
    members = {m["preset"]: group.member_name(film, m["preset"]) for m in submitted["members"]}
    # An ordinary job on the fast cluster too: asked about in the same call as the group's member there.
    done = run_cli("submit", str(scene), "--preset", fast, "--frames", "1", *FILM, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    plain = json.loads(done.stdout)["job"]

    with serving(tmp_path / "frames") as board, sync_playwright() as play:
        counted.refresher = board.refresher
        browser = play.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(board.url)
        card = page.locator(f'article[data-group="{film}"]')
        expect(card).to_be_visible(timeout=30_000)
        for member in members.values():  # folded into the group's entry, not listed again on its own
            expect(page.locator(f'article[data-job="{member}"]')).to_have_count(0)
        for preset in (fast, slow, "local"):
            expect(card.locator(f'.bar.part[data-preset="{preset}"]')).to_be_visible()
        expect(card.locator("button.resubmit")).to_have_count(0)
        expect(card.locator(".no-resubmit")).to_contain_text("no Resubmit")

        # The fast cluster's bar moves on as its frames render, and the pool is handed out.
        first = eventually(lambda: _rendered(_bar(page, film, fast)), lambda n: n >= 1, "a first frame on tbfast",
                           timeout=180, every=0.25)
        eventually(lambda: _rendered(_bar(page, film, fast)), lambda n: n > first, "tbfast's bar to move on",
                   timeout=120, every=0.25)
        expect(card.locator(".moves")).to_contain_text("got frames", timeout=60_000)
        card.locator("details.logs summary").click()
        for preset in (fast, "local"):  # a cluster's tails came in its status call; this computer's are read here
            expect(card.locator("details.logs")).to_contain_text(f"{preset}: ", timeout=30_000)
        if os.environ.get(SCREENSHOT_ENV):
            page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)

        # Nobody else drives it: the page's refresher ends it.
        expect(card.locator(".state").first).to_have_text("COMPLETED", timeout=300_000)
        expect(card.locator(".bar.total span")).to_have_text(f"{FRAMES}/{FRAMES} frames")
        assert "every frame handed out" in (card.locator(".pool").text_content() or "")
        final = [b for p in (fast, slow, "local") for b in [_rendered(_bar(page, film, p))]]
        assert sum(final) == FRAMES, final
        assert board.refresher.group_looks >= 2

        # What each refresh asked the clusters while the group ran: each cluster's status call once, the
        # member's look (markers and log tails) and the fast cluster's ordinary job in the same call.
        asked = [c for c in counted.calls if c.remote and c.refresh is not None]
        refreshes, looks, plain_asked, kinds, tidied = _sort_calls(asked, (members[fast], members[slow]), plain)
        driven = [r for r in refreshes if r <= max(r for r, _m in looks)]  # until the group was over
        for r in driven:
            assert [looks[(r, members[fast])], looks[(r, members[slow])]] == [1, 1], (r, kinds[r])
            assert [plain_asked[(r, True)], plain_asked[(r, False)]] == [1, 0], (r, kinds[r])
        assert all(n == 1 for n in tidied.values()), tidied
        print(f"\nremote calls in each of {len(refreshes)} refreshes: " +
              "; ".join(f"{r}: {dict(kinds[r])}" for r in refreshes))

        # Download: every member's frames into the group's one folder, shown in the grid.
        card.locator("button.download").click()
        expect(page.locator("#said")).to_have_text(f"download {film}: done", timeout=120_000)  # every member's
        expect(card.locator(".grid img").first).to_be_visible(timeout=30_000)
        here = sorted(p.name for p in (tmp_path / "frames" / film).glob("frame_*"))
        assert here == [f"frame_{f:06d}.png" for f in range(1, FRAMES + 1)], here

        # Resubmit asked of a group anyway: refused with the reason.
        answer = page.evaluate("""async name => {
            const token = document.querySelector('meta[name="braas-token"]').content;
            const r = await fetch(`/api/jobs/${encodeURIComponent(name)}/resubmit`,
                                  {method: "POST", headers: {"X-Braas-Token": token}});
            return [r.status, await r.json()];
        }""", film)
        assert answer[0] == 400 and "hands the frames a cluster lost" in answer[1]["error"], answer

        # A second group, cancelled from the page on every cluster.
        other = _submit(scene, f"{slow},{fast}", "1-30")["job"]
        second = page.locator(f'article[data-group="{other}"]')
        expect(second).to_be_visible(timeout=30_000)
        expect(second.locator("button.cancel")).to_be_enabled()
        second.locator("button.cancel").click()
        expect(second.locator(".state").first).to_have_text("CANCELLED", timeout=60_000)
        assert registry.get_group(other)["cancelled"] is True
        for preset in (fast, slow):
            eventually(lambda p=preset: remote(f"squeue -h -n {group.member_name(other, p)}").stdout.strip(),
                       lambda left: left == "", f"Slurm to have nothing of {other} on {preset} left", timeout=60)
        expect(second.locator("button.cancel")).to_be_disabled(timeout=30_000)
        browser.close()
