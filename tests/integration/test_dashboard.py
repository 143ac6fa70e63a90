"""The dashboard against a real job on the test cluster, looked at in Debian's chromium through
playwright: the page loads, the job's progress moves as frames render, two open pages cost the
clusters what one refresher costs (one remote call per cluster per refresh, on the back-off), the
Download button brings the frames into the thumbnail grid, and Cancel cancels the job.

The dashboard runs in a thread of this process (tests/dashboard_server.py), so every command it runs
on the cluster is counted (core.transport's Transport.run, the one door to a cluster)."""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from braas_hpc.core import events, watch
from braas_hpc.core.transport.base import Transport
from tests.conftest import run_cli
from tests.dashboard_server import ensure_chromium, serving
from tests.helpers import eventually

FRAMES = 64  # a second or two each, one task at a time: the job still runs when Cancel is pressed
WINDOW_S = 8.0  # two pages open this long: the refreshes made meanwhile are counted
SCREENSHOT_ENV = "BRAAS_DASHBOARD_SCREENSHOT"  # a path: the page with the job running is saved there (docs/)


def _frames_done(page, job: str) -> int | None:  # noqa: ANN001
    text = page.locator(f'article[data-job="{job}"] .bar.total span').text_content(timeout=10_000) or ""
    found = re.match(r"(\d+)/", text)
    return int(found.group(1)) if found else None


def _settled(board) -> tuple[int, int]:  # noqa: ANN001
    """(refreshes so far, remote calls so far), read between two refreshes."""
    refresher = board.refresher
    while refresher.refreshing:
        time.sleep(0.02)
    return refresher.polls, len(_calls)


_calls: list[tuple[float, tuple[str, ...]]] = []


@pytest.mark.parametrize("watcher", ["off", "on"], ids=["back-off", "job-watcher"])
def test_the_page_follows_a_job_and_cancels_it(watcher: str, testbed, remote, sample_scene: Path,  # noqa: ANN001
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the login node's job watcher (core.events) too: frames it sees land are shown between
    refreshes, and its stream is no scheduler call."""
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv(events.EVENTS_ENV, watcher)

    chromium = ensure_chromium()
    real_run = Transport.run

    async def counted(self: Transport, argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if threading.current_thread().name == "dashboard":
            _calls.append((time.monotonic(), tuple(argv[:2])))
        return await real_run(self, argv, **kwargs)

    monkeypatch.setattr(Transport, "run", counted)
    _calls.clear()
    done = run_cli("submit", str(sample_scene), "--preset", "testbed", "--frames", f"1-{FRAMES}", "--max-parallel",
                   "1", "--json")
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout)
    job, (array_id,) = submitted["job"], submitted["scheduler_ids"]

    with serving(tmp_path / "frames") as board, sync_playwright() as play:
        time.sleep(watch.POLL_MIN_S + 0.5)
        assert _calls == [], "nobody looks yet: nothing may be asked"
        browser = play.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        first = browser.new_page(viewport={"width": 1100, "height": 760})
        first.goto(board.url)
        expect(first.locator(f'article[data-job="{job}"]')).to_be_visible(timeout=30_000)
        assert first.url.endswith("/") and board.token not in first.url  # swapped for the cookie
        second = browser.new_page()
        second.goto(board.url)
        expect(second.locator(f'article[data-job="{job}"]')).to_be_visible(timeout=30_000)

        # The job starts (the shared test cluster may be busy) and its progress moves on the page.
        first_count = eventually(lambda: _frames_done(first, job), lambda n: n is not None and n >= 1,
                                 "a first frame on the page", timeout=180, every=0.25)
        eventually(lambda: _frames_done(first, job), lambda n: n is not None and n > first_count,
                   "the page's progress to move on", timeout=60, every=0.25)

        # Before any download, the preview the status brought is the large picture.
        latest = first.locator(f'article[data-job="{job}"] .latest img')
        expect(latest).to_have_attribute("src", re.compile(r"^/previews/"), timeout=30_000)
        eventually(lambda: latest.evaluate("img => img.complete ? img.naturalWidth : 0"), lambda width: width > 0,
                   "the preview itself to load, through the guard", timeout=10, every=0.2)

        # The newest logs' tails and the seconds per frame, from the same refreshes.
        card = first.locator(f'article[data-job="{job}"]')
        card.locator("details.logs summary").click()
        # The newest log is most often a task still rendering; the ones before it show their frames' ends.
        expect(card.locator("details.logs")).to_contain_text("BRAAS-PROGRESS", timeout=30_000)
        for text in card.locator("details.logs pre").all_text_contents():  # Blender's steps: one line a run
            lines = text.splitlines()
            assert not any(a.startswith("Fra:") and b.startswith("Fra:") for a, b in itertools.pairwise(lines)), text
        expect(card.locator("svg.chart rect").first).to_be_attached()

        # Two pages open: what the clusters are asked is one refresher's, never a page's.
        polls_before, calls_before = _settled(board)
        time.sleep(WINDOW_S)
        polls_after, calls_after = _settled(board)
        refreshes = polls_after - polls_before
        assert calls_after - calls_before == refreshes, "each refresh is one remote call to the one cluster"
        assert 1 <= refreshes <= WINDOW_S / watch.POLL_MIN_S + 1, f"{refreshes} refreshes in {WINDOW_S} s"
        assert _frames_done(second, job) is not None

        # Download: the frames come into the grid and the latest one is shown large.
        expect(first.locator(f'article[data-job="{job}"] button.download')).to_be_enabled(timeout=30_000)
        first.locator(f'article[data-job="{job}"] button.download').click()
        expect(first.locator(f'article[data-job="{job}"] .grid img').first).to_be_visible(timeout=30_000)
        expect(latest).to_have_attribute("src", re.compile(r"^/frames/"), timeout=10_000)
        expect(latest).to_be_visible()
        assert any((tmp_path / "frames" / job).glob("frame_*"))
        if os.environ.get(SCREENSHOT_ENV):
            first.screenshot(path=os.environ[SCREENSHOT_ENV])

        assert (board.refresher.shown_between > 0) == (watcher == "on"), "frames shown between refreshes"

        # Cancel: the job ends CANCELLED before its last frame, on the page and in Slurm.
        assert _frames_done(first, job) < FRAMES
        first.locator(f'article[data-job="{job}"] button.cancel').click()
        expect(first.locator(f'article[data-job="{job}"] .state')).to_have_text("CANCELLED", timeout=30_000)
        expect(second.locator(f'article[data-job="{job}"] .state')).to_have_text("CANCELLED", timeout=30_000)
        eventually(lambda: remote(f"squeue -h -j {array_id}").stdout.strip(), lambda left: left == "",
                   f"Slurm to have no task of {array_id} left", timeout=30)
        assert _frames_done(first, job) < FRAMES
        if watcher == "off":  # Resubmit (once is enough): the missing frames as a new round, cancelled again
            card = first.locator(f'article[data-job="{job}"]')
            card.locator("button.resubmit").click()
            expect(card.locator(".meta").first).to_contain_text("round 2", timeout=30_000)
            expect(card.locator(".state")).not_to_have_text("CANCELLED", timeout=30_000)
            expect(card.locator("button.cancel")).to_be_enabled()
            card.locator("button.cancel").click()
            expect(card.locator(".state")).to_have_text("CANCELLED", timeout=30_000)
            eventually(lambda: remote(f"squeue -h -n {job}").stdout.strip(), lambda left: left == "",
                       f"Slurm to have no task of {job}'s second round left", timeout=30)
        browser.close()
