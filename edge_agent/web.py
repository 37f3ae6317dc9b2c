"""The gateway's read-only web endpoint: a status page, its JSON, and Prometheus metrics.

Standard library only (``http.server.ThreadingHTTPServer`` in a daemon thread); nothing is fetched at run
time: the page, its script and its style are package resources (``edge_agent/static``) and the chart is
drawn in the browser as inline SVG from ``/api/status``, polled every two seconds::

    GET /                  the status page (static/status.html, status.js, status.css)
    GET /api/status        {"gateway": {...}, "sensors": {device: status + "history"}, "time": unix s}
    GET /metrics           Prometheus text format 0.0.4 (edge_agent.metrics)

Read-only: any other method is answered 405. Bounded: at most ``MAX_CLIENTS`` requests are served at
once (others are closed at once), a client has ``REQUEST_TIMEOUT_S`` to send its request. When listening on
a loopback address, requests must name a loopback host (``Host: localhost:9847``, ``127.0.0.1``, ``[::1]``):
a web page elsewhere cannot read the gateway through DNS rebinding.

The numbers come from ``source``: an object with ``snapshot() -> (status document, its age in seconds)``,
``histories() -> {device: SensorHistory}`` and ``queue_capacity() -> {device: frames}`` (the agent).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

from edge_agent import metrics

log = logging.getLogger(__name__)

MAX_CLIENTS = 8
REQUEST_TIMEOUT_S = 10.0
STATIC = {
    "/": ("status.html", "text/html; charset=utf-8"),
    "/static/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/static/status.css": ("status.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class StatusSource(Protocol):
    def snapshot(self) -> tuple[dict, float]: ...

    def histories(self) -> dict[str, Any]: ...

    def queue_capacity(self) -> dict[str, int]: ...


def status_json(source: StatusSource) -> dict:
    """The page's JSON: the gateway summary, each sensor's status with its history and alerts."""
    doc, age = source.snapshot()
    histories = source.histories()
    sensors = {}
    for device, s in (doc.get("sensors") or {}).items():
        h = histories.get(device)
        sensors[device] = dict(s) | {"history": h.snapshot() if h is not None else None}
    gateway = {k: v for k, v in doc.items() if k != "sensors"} | {"status_age_s": round(age, 3)}
    return {"time": time.time(), "gateway": gateway, "sensors": sensors}


def json_safe(x: object) -> object:
    """``x`` with NaN and infinities replaced by None (JSON, and so the browser, has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def _static(name: str) -> bytes:
    return resources.files("edge_agent").joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "edge-agent"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head=True)

    def _refuse_method(self) -> None:
        self.server.refused += 1
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET or HEAD\n", "text/plain; charset=utf-8",
                   extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def _respond(self, head: bool) -> None:
        self.server.requests += 1
        if not self.server.host_allowed(self.headers.get("Host")):
            self.server.refused += 1
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n", "text/plain; charset=utf-8", head=head)
            return
        path = urlsplit(self.path).path
        try:
            if path in STATIC:
                name, ctype = STATIC[path]
                body = _static(name)
            elif path == "/api/status":
                ctype = "application/json"
                body = json.dumps(json_safe(status_json(self.server.source)), separators=(",", ":"),
                                  allow_nan=False).encode()
            elif path == "/metrics":
                doc, age = self.server.source.snapshot()
                ctype = metrics.CONTENT_TYPE
                body = metrics.render(doc, queue_capacity=self.server.source.queue_capacity(),
                                      status_age_s=age).encode()
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", head=head)
                return
        except Exception:  # a bug here must cost one response, never the agent
            self.server.errors += 1
            log.exception("web: %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain; charset=utf-8", head=head)
            return
        self._send(HTTPStatus.OK, body, ctype, head=head)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, *, head: bool = False,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (SECURITY_HEADERS | (extra or {})).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("web %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], source: StatusSource) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.source = source
        self.loopback = ipaddress.ip_address(address[0]).is_loopback
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.requests = self.refused = self.errors = self.overloaded = 0
        super().__init__(address, _Handler)

    def host_allowed(self, host: str | None) -> bool:
        """Any host when listening on the network; a loopback name or address when listening on loopback."""
        if not self.loopback:
            return True
        if not host:
            return False
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name in _LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.overloaded += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class StatusServer:
    """The web endpoint in its own daemon thread. ``start`` never raises for a port it cannot have: the
    error is logged and kept in ``error`` (the agent keeps scoring without its page)."""

    def __init__(self, source: StatusSource, listen: str = "127.0.0.1", port: int = 9847) -> None:
        self.source = source
        self.listen = listen
        self.requested_port = port
        self.error: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The port listened on (the one picked by the system when configured as 0), None when not listening."""
        return None if self._server is None else int(self._server.server_address[1])

    @property
    def url(self) -> str | None:
        if self._server is None:
            return None
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"http://{host}:{self.port}/"

    def start(self) -> bool:
        """Bind and serve; False (logged, ``error`` set) when the address cannot be had."""
        try:
            self._server = _Server((self.listen, self.requested_port), self.source)
        except OSError as exc:
            self.error = f"cannot listen on {self.listen}:{self.requested_port}: {exc.strerror or exc}"
            log.error("status page and /metrics disabled: %s (set [http] port, or enabled = false)", self.error)
            return False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="web", daemon=True)
        self._thread.start()
        log.info("status page at %s, Prometheus metrics at %smetrics", self.url, self.url)
        return True

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def status(self) -> dict:
        s = self._server
        return {"url": self.url, "error": self.error} | ({} if s is None else {
            "requests": s.requests, "refused": s.refused, "errors": s.errors, "overloaded": s.overloaded})
