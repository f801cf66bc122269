"""The node's live dashboard: a small HTTP server in a daemon thread.

Routes: ``/`` the run page (``handoff.observe.page``) in live mode, ``/api/state`` the status
document (``python -m handoff status --json``), ``/api/view`` the page's view document, and
``/metrics`` (Prometheus text). The loop is never blocked by a browser: a request reads the
last snapshot the loop published, and asks the loop for a new one (posted, never waited on
inside the loop) when it is older than ``MAX_AGE``; concurrent requests share one gathering.

Access: a loopback dashboard is open to this machine's users (requests must name a loopback
host, so a web page cannot reach it by DNS rebinding). A dashboard on any other address
needs the token derived from the cluster key (``python -m handoff.keygen --dashboard-token``),
as ``Authorization: Bearer TOKEN``, ``?token=TOKEN`` (which also sets a cookie for the page's
own requests) or that cookie; a node started with ``--insecure`` has no key, so its
dashboard is open like the node itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import sys
import threading
import time
from concurrent.futures import Future
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from handoff.config import is_loopback
from handoff.errors import HandoffError

if TYPE_CHECKING:
    from handoff.node.server import Node

__all__ = ["Dashboard", "dashboard_token", "Snapshot"]

log = logging.getLogger("handoff.dashboard")

MAX_AGE = 0.5  # seconds a snapshot is served before a request asks the loop for a new one
GATHER_WAIT = 5.0  # seconds a request waits for the loop's snapshot
COOKIE = "handoff_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def dashboard_token(secret: bytes) -> str:
    """The dashboard's access token for a cluster key: derived from its secret, so every
    holder of the key can compute it and nobody else can."""
    return hmac.new(secret, b"handoff dashboard token v1", hashlib.sha256).hexdigest()[:32]


class Snapshot:
    """What the loop published at one moment: the status document, this node's stats and
    the page's view document."""

    def __init__(self, state: dict, stats: dict, view: dict) -> None:
        self.state = state
        self.stats = stats
        self.view = view
        self.at = time.monotonic()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):  # a browser went away mid-answer
            log.debug("dashboard: %s left: %s", client_address, exc)
            return
        log.exception("dashboard: error serving %s", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class Dashboard:
    """Serves one node's dashboard on ``bind`` (``HOST:PORT``) until ``stop``."""

    def __init__(self, node: Node, bind: str) -> None:
        self.node = node
        host, _, port = bind.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.loopback = is_loopback(f"tcp://{host}:{port}")
        curve = node.transport.curve
        # a key means a token off loopback; no key means --insecure, which opens it like the node
        self.token = dashboard_token(curve.secret) if curve is not None and not self.loopback else None
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._pending: Future | None = None
        self._pending_at = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> "Dashboard":
        try:
            kind = _Server6 if ":" in self.host else _Server
            server = kind((self.host, self.port), _handler(self))
        except OSError as exc:
            raise HandoffError(f"cannot serve the dashboard on {self.host}:{self.port}: "
                               f"{exc.strerror or exc}") from None
        self._server = server
        port = server.server_address[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{port}/"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"handoff-dashboard-{self.node.name}", daemon=True)
        self._thread.start()
        if not self.loopback and self.token is None:
            log.warning("%s: dashboard at %s is open to anyone who can reach it (the node runs "
                        "with --insecure)", self.node.name, self.url)
        else:
            log.info("%s: dashboard at %s", self.node.name, self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.set_exception(RuntimeError("the node stopped"))

    # ---- snapshots ---------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The last snapshot if fresh, else a new one from the loop (shared by concurrent
        requests); the stale one if the loop does not answer in time."""
        with self._lock:
            snap = self._snapshot
            if snap is not None and time.monotonic() - snap.at < MAX_AGE:
                return snap
            pending = self._pending
            if pending is None or time.monotonic() - self._pending_at > GATHER_WAIT:
                # none under way, or one the loop dropped (a stopping node): ask again
                pending = self._pending = Future()
                self._pending_at = time.monotonic()
                self.node.post(self._gather, pending)
        try:
            result: Snapshot = pending.result(GATHER_WAIT)
            return result
        except Exception:
            if snap is not None:
                return snap
            raise

    def _gather(self, pending: Future) -> None:
        """On the loop: this node's stats now, the cluster's state and the view when gathered."""
        node, status = self.node, self.node.status

        def publish(state: dict) -> None:
            try:
                snap = Snapshot(state, stats, status.view(state))
            except Exception as exc:  # the requests waiting get an error, not a 5 s wait
                self._settle(pending, None, exc)
                raise
            self._settle(pending, snap, None)

        try:
            stats = node.node_stats()
        except Exception as exc:
            self._settle(pending, None, exc)
            raise
        status.gather(publish)

    def _settle(self, pending: Future, snap: Snapshot | None, error: Exception | None) -> None:
        with self._lock:
            if snap is not None:
                self._snapshot = snap
            if self._pending is pending:
                self._pending = None
        if not pending.done():
            if snap is not None:
                pending.set_result(snap)
            else:
                pending.set_exception(error or RuntimeError("no snapshot"))

    # ---- access ------------------------------------------------------------------------
    def allowed(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> bool:
        if self.loopback:
            host = handler.headers.get("Host") or ""
            if host.rpartition(":")[2].isdigit():
                host = host.rpartition(":")[0]
            return host in LOOPBACK_HOSTS or host == self.host
        if self.token is None:
            return True
        offered = list(query.get("token", []))
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            offered.append(auth[len("Bearer "):].strip())
        cookie = SimpleCookie(handler.headers.get("Cookie", ""))
        if COOKIE in cookie:
            offered.append(cookie[COOKIE].value)
        return any(hmac.compare_digest(t.encode(), self.token.encode()) for t in offered)


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    from handoff.node.metrics import render_metrics

    class Handler(BaseHTTPRequestHandler):
        server_version = "handoff-dashboard"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s: dashboard %s", dashboard.node.name, format % args)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if not dashboard.allowed(self, query):
                self._send(HTTPStatus.UNAUTHORIZED, "text/plain; charset=utf-8",
                           b"this dashboard needs its token: python -m handoff.keygen "
                           b"--dashboard-token KEYFILE, then ?token=TOKEN\n")
                return
            try:
                if url.path == "/":
                    self._page(query)
                elif url.path == "/api/state":
                    self._json(dashboard.snapshot().state)
                elif url.path == "/api/view":
                    self._json(dashboard.snapshot().view)
                elif url.path == "/metrics":
                    from prometheus_client.exposition import CONTENT_TYPE_LATEST

                    self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, render_metrics(dashboard.snapshot()))
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8",
                               b"not found; try /, /api/state, /api/view or /metrics\n")
            except Exception as exc:  # the node stopped, or its loop did not answer in time
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain; charset=utf-8",
                           f"the node did not answer: {type(exc).__name__}: {exc}\n".encode())

        def _page(self, query: dict[str, list[str]]) -> None:
            from handoff.observe.page import render_page

            html = render_page(None, live_url="api/view").encode()
            headers = {}
            if query.get("token"):  # the page's own requests carry it as a cookie
                headers["Set-Cookie"] = (f"{COOKIE}={query['token'][0]}; Path=/; HttpOnly; "
                                         "SameSite=Strict")
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", html, headers)

        def _json(self, doc: Any) -> None:
            self._send(HTTPStatus.OK, "application/json", json.dumps(doc, default=str).encode())

        def _send(self, status: HTTPStatus, kind: str, body: bytes,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler
