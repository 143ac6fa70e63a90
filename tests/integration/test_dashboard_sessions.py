"""Interactive sessions on the dashboard: a real session on the test cluster (its command a small
server on the node) shows its job state, node, command and port, read with the cluster's jobs in the
same refresh; what only this computer knows (a tunnel's local end, the viewport's frames per second)
shows once a process here publishes it, and goes when that process is gone."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import pytest

from braas_hpc_interactive.core import live, session
from tests.dashboard_server import ensure_chromium, serving
from tests.integration.test_interactive import _start_with_server
from tests.testbed import nodens


def _publish_and_wait(name: str, ready, done) -> None:  # noqa: ANN001
    live.publish(name, tunnel="127.0.0.1:45999", fps=23.96)
    ready.set()
    done.wait(120)


def test_a_running_session_shows_its_node_port_tunnel_and_fps(testbed, tmp_path: Path,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = ensure_chromium()
    record, conn = asyncio.run(_start_with_server())
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    publisher = context.Process(target=_publish_and_wait, args=(record.name, ready, done))
    try:
        with serving(tmp_path / "frames") as board, sync_playwright() as play:
            browser = play.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(board.url)
            row = page.locator(f'tr[data-session="{record.name}"]')
            expect(row).to_be_visible(timeout=30_000)
            cells = row.locator("td")
            expect(cells.nth(3)).to_have_text("RUNNING", timeout=30_000)
            expect(cells.nth(4)).to_have_text(nodens.HOSTNAME)
            expect(cells.nth(5)).to_have_text("running")
            expect(cells.nth(6)).to_have_text(str(conn.port))
            expect(cells.nth(7)).to_have_text("–")  # no tunnel here yet
            publisher.start()
            assert ready.wait(30)
            expect(cells.nth(7)).to_have_text("127.0.0.1:45999", timeout=30_000)
            expect(cells.nth(8)).to_have_text("24.0")
            done.set()
            publisher.join(30)
            expect(cells.nth(7)).to_have_text("–", timeout=30_000)  # its writer is gone: nothing shown
            browser.close()
    finally:
        done.set()
        asyncio.run(session.stop(record))
