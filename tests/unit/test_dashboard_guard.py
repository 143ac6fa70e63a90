"""Who may look at the dashboard: the real server (uvicorn) on 127.0.0.1, asked over HTTP."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from tests.dashboard_server import get, serving


@pytest.fixture
def board(user_dirs: dict[str, str], tmp_path: Path):  # noqa: ANN201
    with serving(tmp_path / "frames") as running:
        yield running


def test_the_token_opens_the_page_once_and_a_cookie_keeps_it(board) -> None:  # noqa: ANN001
    port, token = board.port, board.token
    assert get(port, "/").status == 403
    assert get(port, "/api/snapshot").status == 403
    assert get(port, "/events").status == 403
    assert get(port, "/?token=" + "x" * len(token)).status == 403
    first = get(port, f"/?token={token}")
    assert first.status == 303 and first.getheader("location") == "/"  # the token leaves the address bar
    cookie = first.getheader("set-cookie")
    assert cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    name_value = cookie.split(";", 1)[0]
    page = get(port, "/", headers={"Cookie": name_value})
    assert page.status == 200
    assert "frame-ancestors 'none'" in page.getheader("content-security-policy")
    assert page.getheader("access-control-allow-origin") is None
    assert get(port, "/", headers={"Cookie": name_value.split("=")[0] + "=wrong"}).status == 403


def test_another_host_name_is_refused_even_with_the_token(board) -> None:  # noqa: ANN001
    """DNS rebinding: a site whose name resolves to 127.0.0.1 reaches the port under its own name."""
    port, token = board.port, board.token
    assert get(port, f"/api/snapshot?token={token}").status == 200
    assert get(port, f"/api/snapshot?token={token}", host=f"localhost:{port}").status == 200
    for host in (f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", ""):
        assert get(port, f"/api/snapshot?token={token}", host=host).status == 403, host


def test_a_button_needs_the_token_in_its_header(board) -> None:  # noqa: ANN001
    """A form another site posts carries the cookie at most, never a header of ours (no CORS)."""
    port, token = board.port, board.token
    assert get(port, f"/api/jobs/nojob/cancel?token={token}", method="POST").status == 403
    refused = get(port, f"/api/jobs/nojob/cancel?token={token}", method="POST", headers={"X-Braas-Token": token})
    assert refused.status == 400  # past the guard: no such job
    assert get(port, f"/api/snapshot?token={token}", method="OPTIONS",
               headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}).status == 405


def test_it_listens_on_loopback_only(board) -> None:  # noqa: ANN001
    with socket.socket() as probe:
        probe.settimeout(2)
        address = socket.gethostbyname(socket.gethostname())
        if address.startswith("127."):
            address = _other_address()
        if address:
            assert probe.connect_ex((address, board.port)) != 0
    assert board.server.servers[0].sockets[0].getsockname()[0] == "127.0.0.1"


def _other_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only a route is looked up
            return s.getsockname()[0]
        except OSError:
            return ""


def test_the_page_carries_the_token_for_its_buttons_and_nothing_inline(board) -> None:  # noqa: ANN001
    cookie = get(board.port, f"/?token={board.token}").getheader("set-cookie").split(";", 1)[0]
    text = get(board.port, "/", headers={"Cookie": cookie}).body.decode()
    assert re.search(r'<meta name="braas-token" content="([^"]+)">', text).group(1) == board.token
    assert "<script>" not in text and "onclick" not in text  # the CSP allows scripts from files only
    assert json.loads(get(board.port, "/api/snapshot", headers={"Cookie": cookie}).body)["jobs"] == []
    assert get(board.port, "/assets/app.js", headers={"Cookie": cookie}).status == 200


def test_the_command_prints_its_link_serves_it_and_stops_on_ctrl_c(user_dirs: dict[str, str], tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import jsonschema

    from braas_hpc.cli_json import SCHEMAS

    proc = subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", "dashboard", "--no-open", "--json", "--dest",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **user_dirs})
    try:
        said = json.loads(proc.stdout.readline())
        jsonschema.validate(said, SCHEMAS["dashboard"])
        port, token = said["port"], said["url"].rsplit("token=", 1)[1]
        assert said["url"] == f"http://127.0.0.1:{port}/?token={token}"
        assert get(port, f"/api/snapshot?token={token}").status == 200
        assert get(port, "/api/snapshot").status == 403
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert token not in err  # nothing logs the link's secret


def test_without_the_extra_it_says_how_to_install_it(user_dirs: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    import braas_hpc.dashboard
    from braas_hpc import cli

    monkeypatch.delattr(braas_hpc.dashboard, "app", raising=False)
    for name in [m for m in sys.modules if m == "braas_hpc.dashboard.app" or m.startswith(("uvicorn", "starlette"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert cli.main(["dashboard", "--no-open"]) == 2
    assert "pip install 'braas-hpc[dashboard]'" in capsys.readouterr().err
