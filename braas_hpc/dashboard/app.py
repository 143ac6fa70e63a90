"""The dashboard's web face (starlette, served by uvicorn on 127.0.0.1 only).

Who may look: the holder of this run's random token, given in the URL the command prints (the first
visit swaps it for a cookie, HttpOnly and SameSite=Strict, and drops it from the address bar), and
only under the Host names 127.0.0.1:PORT or localhost:PORT, so a web site whose name resolves to this
computer (DNS rebinding) is refused. A button's POST also needs the token in a header, which no other
site can set without CORS, and no CORS header is ever sent. No page may frame ours; scripts come from
this server only (Content-Security-Policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core import group, registry
from ..core.display import plain
from ..core.errors import BraasError, UsageError
from ..core.jobs import FRAME_FILE
from ..core.live import held_preview
from .refresher import Refresher

log = logging.getLogger(__name__)
TOKEN_HEADER = "x-braas-token"
HEARTBEAT_S = 15.0  # a comment line on the event stream now and then: a page gone is noticed
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


class Guard:
    """Refuses, before any route runs, a request with another Host, without the token, or a POST without
    the token header; adds the security headers to every answer."""

    def __init__(self, app: ASGIApp, token: str, port: int) -> None:
        self.app, self.token = app, token
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.cookie = f"braas_dashboard_{port}"  # cookies ignore ports: one name per run's port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refused = self._refusal(Request(scope))
        await (refused or self.app)(scope, receive, with_headers)

    def _refusal(self, request: Request) -> Response | None:
        if request.headers.get("host", "") not in self.hosts:
            return PlainTextResponse("refused: this page answers only as 127.0.0.1 or localhost\n", 403)
        by_url = request.query_params.get("token")
        if not (_same(by_url, self.token) or _same(request.cookies.get(self.cookie), self.token)):
            return PlainTextResponse("refused: open the link `braas-hpc dashboard` printed (it holds this run's "
                                     "token)\n", 403)
        if request.method not in ("GET", "HEAD", "POST"):
            return PlainTextResponse("method not allowed\n", 405)
        if request.method == "POST" and not _same(request.headers.get(TOKEN_HEADER), self.token):
            return PlainTextResponse("refused: a button of the page itself is needed\n", 403)
        if by_url is not None and request.method == "GET" and request.url.path == "/":
            response = RedirectResponse("/", 303)  # the token leaves the address bar and the history
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
            return response
        return None


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


class Pages:
    """The routes: the page, its two assets, the snapshot and its event stream, frames, the buttons."""

    def __init__(self, refresher: Refresher, token: str) -> None:
        self.refresher, self.token = refresher, token

    async def page(self, request: Request) -> Response:
        return HTMLResponse(_asset("page.html").replace("{{TOKEN}}", html.escape(self.token)))

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        kinds = {"app.js": "text/javascript", "app.css": "text/css"}
        if name not in kinds:
            return PlainTextResponse("not found\n", 404)
        return Response(_asset(name), media_type=kinds[name])

    async def snapshot(self, request: Request) -> Response:
        return JSONResponse(self.refresher.snapshot)

    async def stream(self, request: Request) -> Response:
        return StreamingResponse(self._lines(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def _lines(self) -> AsyncIterator[str]:
        updates = self.refresher.updates()
        try:
            while True:
                try:
                    found = await asyncio.wait_for(anext(updates), HEARTBEAT_S)
                except TimeoutError:
                    yield ": still here\n\n"
                    continue
                yield f"data: {json.dumps(found)}\n\n"
        finally:
            await updates.aclose()

    async def frame(self, request: Request) -> Response:
        job, name = request.path_params["job"], request.path_params["name"]  # a job's or a group's folder
        if (not FRAME_FILE.match(name) or "/" in job or job.startswith(".")
                or not (registry.has_job(job) or group.is_group(job))):
            return PlainTextResponse("not found\n", 404)
        path = self.refresher.frames_root / job / name
        if path.is_symlink() or not path.is_file():
            return PlainTextResponse("not found\n", 404)
        return FileResponse(path)

    async def preview(self, request: Request) -> Response:
        """The small JPEG of the job's newest frame that the status brought (core.live), held here."""
        job = request.path_params["job"]
        if "/" in job or job.startswith(".") or not registry.has_job(job):
            return PlainTextResponse("not found\n", 404)
        path = held_preview(job)
        if path is None or path.parent != registry.previews_path(job) or path.is_symlink() or not path.is_file():
            return PlainTextResponse("not found\n", 404)
        return FileResponse(path, media_type="image/jpeg")

    async def act(self, request: Request) -> Response:
        job, action = request.path_params["job"], request.path_params["action"]
        try:
            return JSONResponse({"ok": True, **await self.refresher.act(job, action)})
        except UsageError as error:
            return JSONResponse({"ok": False, "error": plain(str(error))}, 400)
        except BraasError as error:
            return JSONResponse({"ok": False, "error": plain(str(error))}, 502)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(self.refresher.run(), name="braas-dashboard-refresher")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def build_app(refresher: Refresher, token: str, port: int) -> ASGIApp:
    pages = Pages(refresher, token)
    routes = [Route("/", pages.page), Route("/assets/{name}", pages.asset), Route("/api/snapshot", pages.snapshot),
              Route("/events", pages.stream), Route("/frames/{job}/{name}", pages.frame),
              Route("/previews/{job}", pages.preview),
              Route("/api/jobs/{job}/{action}", pages.act, methods=["POST"])]  # a job's or a group's
    return Guard(Starlette(routes=routes, lifespan=pages.lifespan), token, port)


@dataclass
class Dashboard:
    """A dashboard bound to its port (random when 0), not serving yet: `url` holds the token."""

    refresher: Refresher
    server: uvicorn.Server
    sock: socket.socket
    token: str

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    async def serve(self) -> None:
        await self.server.serve(sockets=[self.sock])

    def stop(self) -> None:
        self.server.should_exit = True


def make(port: int = 0, frames_root: Path | None = None, poll_max_s: float | None = None) -> Dashboard:
    """Bind 127.0.0.1:`port` (refused with a clear message when taken) and build the app on it."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535 (or 0: any free port), not {port}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as error:
        sock.close()
        raise UsageError(f"127.0.0.1:{port} cannot be used ({error.strerror}); give another --port, or 0") from None
    sock.listen(128)  # a browser opened at once waits for the server instead of being refused
    token = secrets.token_urlsafe(32)
    refresher = Refresher((frames_root or Path.cwd()).resolve(), poll_max_s)
    bound = int(sock.getsockname()[1])
    # log_config None: uvicorn's errors go through braas-hpc's logging; no access log (URLs may hold the token)
    config = uvicorn.Config(build_app(refresher, token, bound), log_config=None, access_log=False,
                            lifespan="on", proxy_headers=False, server_header=False, date_header=False,
                            ws="none", timeout_graceful_shutdown=2)
    return Dashboard(refresher, uvicorn.Server(config), sock, token)
