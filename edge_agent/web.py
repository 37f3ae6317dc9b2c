"""The gateway's web endpoint: a status page, its JSON, Prometheus metrics, and (with a write token) answers.

Standard library only; nothing is fetched at run time: the page, its script and its style are package resources
(``edge_agent/static``) and the chart is drawn in the browser as inline SVG from ``/api/status``, polled every
two seconds::

    GET /                  the status page (static/status.html, status.js, status.css)
    GET /api/status        {"gateway": {...}, "sensors": {device: status + "history"}, "time": unix s}
    GET /metrics           Prometheus text format 0.0.4 (edge_agent.metrics)
    GET /api/sensors/<device>/trend?span=1h|24h|30d    the trend over weeks (edge_agent.trend), JSON; .../trend.csv
                           the same rows as CSV (times in UTC) for a spreadsheet
    POST /api/sensors/<device>/answer    a technician's answer to the sensor's alert (``contract.answer`` JSON),
                           only with a write token configured ([http] write_token_file or write_token_env)

Read-only unless a write token is configured: any other method is answered 405. When listening on a loopback
address, requests must name a loopback host (``Host: localhost:9847``, ``127.0.0.1``, ``[::1]``): a web page
elsewhere cannot read the gateway through DNS rebinding.

A write must come from the page itself, with the token: ``Authorization: Bearer <token>`` (compared in constant
time), ``Content-Type: application/json`` (a form on another site can send neither without the browser asking
first, and the server answers no such question: no CORS), and, when the browser says where it comes from, an
``Origin`` equal to the ``Host`` it was sent to and a ``Sec-Fetch-Site`` of ``same-origin``. Each refusal is
counted by reason (``http.writes_refused``: read_only, cross_site, not_json, no_token, bad_token, too_large,
not_found); an answer the agent refuses (no alert, an old alert) is counted in ``answers.refused``.

Bounded, and no client can lock the others out::

    accept ─► one selector thread reads every request head, non-blocking, each within HEAD_TIMEOUT_S of its
              connection (a client that sends a byte every few seconds is cut off, counted in slow_clients);
              at most MAX_PENDING connections wait for their head (beyond, the oldest is closed);
              a head larger than MAX_HEAD is refused (431); a POST's body (at most MAX_BODY) is read here too
           ─► complete requests ─► MAX_CLIENTS worker threads answer them (503 when all are busy and
              MAX_QUEUED wait), then close the connection

A slow or idle client holds a few bytes of the selector, never a worker, so ``/metrics`` is answered under
slowloris. A client that resets before reading is one counted (``client_resets``), rate-limited log line.

The numbers come from ``source``: an object with ``snapshot() -> (status document, its age in seconds)``,
``histories() -> {device: SensorHistory}`` and ``answer(device, body, via) -> the recorded answer`` (the agent).
"""

from __future__ import annotations

import contextlib
import hmac
import io
import ipaddress
import json
import logging
import math
import queue
import re
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from edge_agent import metrics
from edge_agent.contract.answer import AnswerError
from edge_agent.ratelog import RateLimitedLog
from edge_agent.status import HttpCounters, fields_of

log = logging.getLogger(__name__)

MAX_CLIENTS = 4  # requests answered at once (worker threads)
MAX_QUEUED = 32  # complete requests waiting for a worker (beyond: 503)
MAX_PENDING = 256  # connections still sending their request head
HEAD_TIMEOUT_S = 5.0  # from accept to the end of the head
MAX_HEAD = 16 * 1024
MAX_BODY = 4096  # a POST's body (an answer is well under 1 KiB)
WRITE_TIMEOUT_S = 10.0
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
_ANSWER_PATH = re.compile(r"/api/sensors/([^/]{1,200})/answer")
_TREND_PATH = re.compile(r"/api/sensors/([^/]{1,200})/trend(\.csv)?")
_CONTENT_LENGTH = re.compile(rb"\r?\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r?\n", re.IGNORECASE)
#: HTTP status of an answer the agent refused, by reason (``contract.answer.REASONS``).
_ANSWER_STATUS = {"unknown_sensor": HTTPStatus.NOT_FOUND, "no_alert": HTTPStatus.CONFLICT,
                  "stale_alert": HTTPStatus.CONFLICT, "too_fast": HTTPStatus.TOO_MANY_REQUESTS}


class StatusSource(Protocol):
    def snapshot(self) -> tuple[dict, float]: ...

    def histories(self) -> dict[str, Any]: ...

    def answer(self, device: str, body: bytes, via: str) -> dict: ...


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
    """Answers one request whose head the selector already read (``rfile`` is that head)."""

    server: _Server
    server_version = "edge-agent"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection

    def __init__(self, sock: socket.socket, client: Any, server: _Server, head: bytes) -> None:
        self._head = head
        super().__init__(sock, client, server)

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.rfile = io.BytesIO(self._head)
        self.wfile = socketserver._SocketWriter(self.connection)  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head=True)

    def _refuse_method(self) -> None:
        self.server.counters.refused += 1
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET or HEAD\n", "text/plain; charset=utf-8",
                   extra={"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815 (no CORS preflight is ever granted)

    def do_POST(self) -> None:  # noqa: N802
        if self.server.token is None:
            self.server.count_write_refused("read_only")
            self._refuse_method()
            return
        self.server.counters.requests += 1
        try:
            self._post()
        except Exception:  # a bug here must cost one response, never the agent
            self.server.counters.errors += 1
            log.exception("web: POST %s failed", self.path[:200])
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def _post(self) -> None:
        """An answer to a sensor's alert: same origin, the token, JSON; then the agent decides (see the module
        docstring)."""
        srv, h = self.server, self.headers

        def refuse(status: HTTPStatus, reason: str, message: str, extra: dict | None = None) -> None:
            srv.count_write_refused(reason)
            self._json(status, {"error": message, "reason": reason}, extra)

        host = h.get("Host")
        if not srv.host_allowed(host):
            srv.counters.refused += 1
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n", "text/plain; charset=utf-8")
            return
        m = _ANSWER_PATH.fullmatch(urlsplit(self.path).path)
        if m is None:
            refuse(HTTPStatus.NOT_FOUND, "not_found", "POST only to /api/sensors/<device>/answer")
            return
        site, origin = h.get("Sec-Fetch-Site"), h.get("Origin")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            refuse(HTTPStatus.FORBIDDEN, "cross_site", f"refused: sent from another site (Sec-Fetch-Site: {site[:40]})")
            return
        if origin is not None and not _same_origin(origin, host):
            refuse(HTTPStatus.FORBIDDEN, "cross_site", "refused: the page sending this is not this gateway's "
                                                       f"(Origin {origin[:80]!r}, Host {str(host)[:80]!r})")
            return
        if (h.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "not_json", "an answer is JSON (Content-Type: application/json)")
            return
        scheme, _, given = (h.get("Authorization") or "").strip().partition(" ")
        if not given:
            refuse(HTTPStatus.UNAUTHORIZED, "no_token", "the write token is required (Authorization: Bearer <token>)",
                   {"WWW-Authenticate": 'Bearer realm="edge-agent"'})
            return
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"), srv.token):
            refuse(HTTPStatus.FORBIDDEN, "bad_token", "wrong write token")
            return
        try:
            length = int(h.get("Content-Length") or "")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"the body must be 0..{MAX_BODY} bytes with a "
                                                                     "Content-Length")
            return
        body = self.rfile.read(length)
        device = unquote(m.group(1))
        try:
            answer = srv.source.answer(device, body, "page")
        except AnswerError as exc:
            self._json(_ANSWER_STATUS.get(exc.reason, HTTPStatus.BAD_REQUEST), {"error": str(exc),
                                                                                "reason": exc.reason})
            return
        self._json(HTTPStatus.OK, {"device": device, "answer": answer})

    def _json(self, status: HTTPStatus, doc: dict, extra: dict | None = None) -> None:
        self._send(status, json.dumps(json_safe(doc), separators=(",", ":")).encode(), "application/json",
                   extra=extra)

    def _respond(self, head: bool) -> None:
        self.server.counters.requests += 1
        if not self.server.host_allowed(self.headers.get("Host")):
            self.server.counters.refused += 1
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
                body = metrics.render(doc, status_age_s=age).encode()
            elif (m := _TREND_PATH.fullmatch(path)) is not None:
                span = (parse_qs(urlsplit(self.path).query).get("span") or ["24h"])[0]
                try:
                    found = self.server.source.trend_of(unquote(m.group(1)), span, as_csv=bool(m.group(2)))
                except ValueError as exc:
                    self._send(HTTPStatus.BAD_REQUEST, f"{exc}\n".encode(), "text/plain; charset=utf-8", head=head)
                    return
                if found is None:
                    self._send(HTTPStatus.NOT_FOUND, b"no trend for that sensor (an unknown sensor, or the gateway "
                               b"keeps no trend: [status] trend_file)\n", "text/plain; charset=utf-8", head=head)
                    return
                if m.group(2):
                    ctype, body = "text/csv; charset=utf-8", found.encode()
                else:
                    ctype = "application/json"
                    body = json.dumps(json_safe(found), separators=(",", ":"), allow_nan=False).encode()
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", head=head)
                return
        except Exception:  # a bug here must cost one response, never the agent
            self.server.counters.errors += 1
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
        self.send_header("Connection", "close")
        for k, v in (SECURITY_HEADERS | (extra or {})).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("web %s: " + format, self.address_string(), *args)


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether the ``Origin`` a browser sent is the ``Host`` the request went to (scheme http)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme == "http" and bool(host) and parts.netloc.lower() == host.strip().lower()


def _complete(data: bytes | bytearray) -> bool:
    """Whether a request's head, and the body its ``Content-Length`` announces (when at most ``MAX_BODY``), are in."""
    end = data.find(b"\r\n\r\n")
    end = end + 4 if end >= 0 else data.find(b"\n\n") + 2 if data.find(b"\n\n") >= 0 else -1
    if end < 0:
        return False
    m = _CONTENT_LENGTH.search(bytes(data[:end]))
    if m is None:
        return True
    length = int(m.group(1))
    return length > MAX_BODY or len(data) - end >= length  # too large: answered 413 without its body


@dataclass
class _Pending:
    """A connection whose request head is still arriving."""

    sock: socket.socket
    address: Any
    since: float
    data: bytearray = field(default_factory=bytearray)


class _Server:
    """The listening socket, the head-reading selector thread and the worker threads (see the module docstring)."""

    def __init__(self, address: tuple[str, int], source: StatusSource, counters: HttpCounters,
                 token: bytes | None = None) -> None:
        self.address = address
        self.source = source
        self.token = token
        self.loopback = ipaddress.ip_address(address[0]).is_loopback
        self.counters = counters
        self._ratelog = RateLimitedLog(log)
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._work: queue.Queue[tuple[socket.socket, Any, bytes] | None] = queue.Queue(MAX_QUEUED)
        self._threads: list[threading.Thread] = []

    @property
    def server_address(self) -> tuple:
        return self._listener.getsockname() if self._listener is not None else self.address

    def start(self) -> None:
        """Bind and listen (OSError when the address cannot be had), then start the threads."""
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        self._listener = socket.create_server(self.address, family=family, backlog=128, reuse_port=False)
        self._listener.setblocking(False)
        self._threads = [threading.Thread(target=self._select, name="web", daemon=True)] + [
            threading.Thread(target=self._serve, name=f"web-{i}", daemon=True) for i in range(MAX_CLIENTS)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for _ in range(MAX_CLIENTS):
            with contextlib.suppress(queue.Full):
                self._work.put_nowait(None)
        for t in self._threads:
            t.join(5)
        if self._listener is not None:
            self._listener.close()

    def count_write_refused(self, reason: str) -> None:
        c = self.counters
        c.writes_refused[reason] = c.writes_refused.get(reason, 0) + 1

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

    # ------------------------------------------------------------------ the selector thread
    def _select(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        pending: dict[socket.socket, _Pending] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    if key.fileobj is self._listener:
                        self._accept(sel, pending)
                    else:
                        self._read(sel, pending, pending.get(key.fileobj))
                now = time.monotonic()
                for p in [p for p in pending.values() if now - p.since > HEAD_TIMEOUT_S]:
                    self.counters.slow_clients += 1
                    self._drop(sel, pending, p)
        except Exception:  # never lose the page over one client
            self.counters.errors += 1
            log.exception("web: the request reader failed; the page is down until the agent restarts")
        finally:
            for p in list(pending.values()):
                self._drop(sel, pending, p)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, pending: dict) -> None:
        for _ in range(64):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, ...: counted, the listener stays
                self.counters.errors += 1
                self._ratelog.log(logging.ERROR, "accept", "web: accept failed: %s", exc)
                return
            sock.setblocking(False)
            if len(pending) >= MAX_PENDING:  # the oldest waiting head goes: a flood cannot keep newcomers out
                self.counters.overloaded += 1
                self._drop(sel, pending, min(pending.values(), key=lambda p: p.since))
            pending[sock] = _Pending(sock, address, time.monotonic())
            sel.register(sock, selectors.EVENT_READ)

    def _read(self, sel: selectors.BaseSelector, pending: dict, p: _Pending | None) -> None:
        if p is None:
            return
        try:
            chunk = p.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.counters.client_resets += 1
            self._drop(sel, pending, p)
            return
        if not chunk:
            self._drop(sel, pending, p)
            return
        p.data += chunk
        if not _complete(p.data):
            if len(p.data) > MAX_HEAD + MAX_BODY or (len(p.data) > MAX_HEAD and b"\n\n" not in p.data
                                                     and b"\r\n\r\n" not in p.data):
                self.counters.oversized += 1
                sel.unregister(p.sock)
                del pending[p.sock]
                self._reply_and_close(p.sock, b"HTTP/1.0 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n")
            return
        sel.unregister(p.sock)
        del pending[p.sock]
        try:
            self._work.put_nowait((p.sock, p.address, bytes(p.data)))
        except queue.Full:
            self.counters.overloaded += 1
            self._reply_and_close(p.sock, b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")

    def _drop(self, sel: selectors.BaseSelector, pending: dict, p: _Pending) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(p.sock)
        pending.pop(p.sock, None)
        with contextlib.suppress(OSError):
            p.sock.close()

    @staticmethod
    def _reply_and_close(sock: socket.socket, response: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.send(response)
        with contextlib.suppress(OSError):
            sock.close()

    # ------------------------------------------------------------------ the workers
    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None or self._stop.is_set():
                return
            sock, address, head = item
            try:
                sock.setblocking(True)
                _Handler(sock, address, self, head)
            except (ConnectionError, TimeoutError, OSError) as exc:  # the client went away or stopped reading
                self.counters.client_resets += 1
                self._ratelog.log(logging.INFO, "reset", "web: client %s went away before reading its answer "
                                  "(%s); %d so far", address[0] if address else "?", type(exc).__name__,
                                  self.counters.client_resets)
            except Exception:
                self.counters.errors += 1
                self._ratelog.log(logging.ERROR, "handler", "web: a request failed", exc_info=True)
            finally:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


class StatusServer:
    """The web endpoint in its own daemon thread. ``start`` never raises for a port it cannot have: the
    error is logged and kept in ``error`` (the agent keeps scoring without its page)."""

    def __init__(self, source: StatusSource, listen: str = "127.0.0.1", port: int = 9847,
                 write_token: Callable[[], str | None] | None = None) -> None:
        self.source = source
        self.listen = listen
        self.requested_port = port
        self.write_token = write_token  # read at start: the page takes answers only with one
        self.counters = HttpCounters()
        self._server: _Server | None = None

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
        """Read the write token (ConfigError when one is configured but cannot be read), bind and serve; False
        (logged, ``error`` set) when the address cannot be had."""
        token = self.write_token() if self.write_token is not None else None
        self.counters.writable = token is not None
        server = _Server((self.listen, self.requested_port), self.source, self.counters,
                         None if token is None else token.encode("utf-8"))
        try:
            server.start()
        except OSError as exc:
            self.counters.error = f"cannot listen on {self.listen}:{self.requested_port}: {exc.strerror or exc}"
            log.error("status page and /metrics disabled: %s (set [http] port, or enabled = false)",
                      self.counters.error)
            return False
        self._server = server
        log.info("status page at %s (%s), Prometheus metrics at %smetrics", self.url,
                 "takes answers with the write token" if token is not None else "read-only", self.url)
        return True

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        self._server = None

    @property
    def error(self) -> str | None:
        """Why the server is not serving (a port taken), or None."""
        return self.counters.error

    def status(self) -> dict:
        self.counters.url = self.url
        return fields_of(self.counters)
