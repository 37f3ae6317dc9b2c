"""The web endpoint: read-only, bounded, loopback-only by default, never the reason the agent stops."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import socket
import struct
import time

import pytest

from edge_agent import web
from edge_agent.agent import Agent
from edge_agent.alerts import AlertEvent, WindowResult
from edge_agent.config import config_from_dict
from edge_agent.contract.errors import ConfigError
from edge_agent.history import SensorHistory
from edge_agent.web import StatusServer, json_safe
from firmware_sim.link import PtyLink
from tests.agent.gateway_helpers import gateway_config, running
from tests.agent.pipeline_helpers import frames_of
from tests.waiting import wait_for


def _get(port: int, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.headers), r.read()
    finally:
        conn.close()


@pytest.fixture
def agent(tmp_path, agent_bundle):
    """An agent started but not scoring (no ``run`` loop) with two sensors, and its web server on a free port."""
    links = {"pump-1": PtyLink(tmp_path / "tty1"), "fan-2": PtyLink(tmp_path / "tty2")}
    agent = Agent(gateway_config(tmp_path, agent_bundle, links)).start()
    assert agent.web.port is not None
    try:
        yield agent
    finally:
        agent.close()
        for link in links.values():
            link.close()


def test_page_script_style_json_and_metrics_are_served(agent):
    port = agent.web.port
    status, headers, body = _get(port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/static/status.js"' in body and b"http" not in body.replace(b"http-equiv", b"")  # nothing external
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    for path, ctype in (("/static/status.js", "text/javascript"), ("/static/status.css", "text/css")):
        status, headers, body = _get(port, path)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and len(body) > 1000
        assert b"://" not in body.replace(b"http://www.w3.org/2000/svg", b"")  # no CDN, no remote font
    status, headers, body = _get(port, "/api/status?x=1")
    doc = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(doc["sensors"]) == {"pump-1", "fan-2"} and doc["gateway"]["gateway"] == "hall-3"
    assert doc["sensors"]["pump-1"]["history"]["t"] == [] and doc["gateway"]["http"]["url"] == agent.web.url
    status, headers, body = _get(port, "/metrics")
    assert status == 200 and b"edge_agent_windows_scored_total{sensor=\"pump-1\"} 0" in body
    status, headers, body = _get(port, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_read_only_and_loopback_only(agent):
    port = agent.web.port
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, _ = _get(port, "/api/status", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert _get(port, "/../../etc/passwd")[0] == 404
    assert _get(port, "/static/../web.py")[0] == 404
    assert _get(port, "/api/status", host="attacker.example:9847")[0] == 421  # DNS rebinding
    assert _get(port, "/api/status", host="")[0] == 421
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]:9847", "LOCALHOST"):
        assert _get(port, "/api/status", host=host)[0] == 200, host
    counters = agent.web.status()
    assert counters["refused"] >= 7 and counters["errors"] == 0


def test_slow_idle_and_resetting_clients_cannot_lock_the_page_out(agent, monkeypatch, capfd):
    """Issue 14, break 10: 8 clients sending one header byte every 4 s left 0 of 20 /metrics requests answered in
    40 s; 200 idle connections locked the page out for 10 s; clients that reset before reading printed 5,400 lines
    of traceback. Now heads are read by one selector within HEAD_TIMEOUT_S, workers only see complete requests."""
    monkeypatch.setattr(web, "HEAD_TIMEOUT_S", 1.5)
    port = agent.web.port
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    try:
        t0 = time.monotonic()
        answered = 0
        for i in range(20):
            for s in slow:  # slowloris: one byte of a header at a time, forever
                with contextlib.suppress(OSError):
                    s.send(b"GET /metrics HTTP/1.1\r\nX-a: "[i % 20:i % 20 + 1])
            answered += _get(port, "/metrics")[0] == 200
        assert answered == 20 and time.monotonic() - t0 < 10, f"{answered} of 20 answered"
        assert wait_for(lambda: agent.web.status()["slow_clients"] >= 208, 10), agent.web.status()
    finally:
        for s in slow + idle:
            s.close()
    for _ in range(200):  # clients that reset before reading their answer
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.close()  # RST
    assert wait_for(lambda: _ok(port), 10)
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("\n") < 20, err[-2000:]


def test_a_head_too_large_is_refused(agent):
    with socket.create_connection(("127.0.0.1", agent.web.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n" + b"X-long: " + b"a" * (web.MAX_HEAD + 100))
        assert s.recv(100).startswith(b"HTTP/1.0 431")
    assert agent.web.status()["oversized"] == 1 and _ok(agent.web.port)


def _refused(port: int) -> bool:
    try:
        return _get(port, "/api/status")[0] != 200
    except (ConnectionError, http.client.HTTPException, OSError):
        return True


def _ok(port: int) -> bool:
    try:
        return _get(port, "/api/status")[0] == 200
    except (ConnectionError, http.client.HTTPException, OSError):
        return False


def test_a_taken_port_costs_the_page_not_the_agent(tmp_path, agent_bundle, degrading_samples):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    links = {"pump-1": PtyLink(tmp_path / "tty1", write_timeout=10)}
    agent = Agent(gateway_config(tmp_path, agent_bundle, links, http={"port": port}))
    try:
        with running(agent):
            for f in frames_of(degrading_samples[: 20_000 * 2], 1024):
                links["pump-1"].send(f)
            assert wait_for(lambda: agent.sensor("pump-1").pipeline.counters.windows_scored > 0, 10)
            http_status = agent.status()["http"]
    finally:
        blocker.close()
        links["pump-1"].close()
    assert http_status["url"] is None and "cannot listen on 127.0.0.1" in http_status["error"]


def test_http_config():
    base = {"device": "p", "source": {"kind": "serial", "serial": {"port": "x"}}, "bundle": {"path": "b"}}
    cfg = config_from_dict(base)
    assert (cfg.http.enabled, cfg.http.listen, cfg.http.port) == (True, "127.0.0.1", 9847)
    assert config_from_dict(base | {"http": {"listen": "::1", "port": 0}}).http.listen == "::1"
    with pytest.raises(ConfigError, match="http.listen: must be an IP address"):
        config_from_dict(base | {"http": {"listen": "gateway.local"}})
    with pytest.raises(ConfigError, match="http.port: must be 0..65535"):
        config_from_dict(base | {"http": {"port": 70000}})
    with pytest.raises(ConfigError, match="http.prot: unknown key"):
        config_from_dict(base | {"http": {"prot": 1}})


def test_ipv6_loopback(agent):
    server = StatusServer(agent, "::1", 0)
    if not server.start():
        pytest.skip(f"no IPv6 loopback here: {server.error}")
    try:
        conn = http.client.HTTPConnection("::1", server.port, timeout=10)
        conn.request("GET", "/api/status")
        assert conn.getresponse().status == 200 and server.url == f"http://[::1]:{server.port}/"
        conn.close()
    finally:
        server.stop()


def test_history_keeps_the_peak_of_each_second_and_stays_bounded():
    now = [1000.0]
    h = SensorHistory(points=5, bucket_s=1.0, events=2, clock=lambda: now[0])

    def window(score: float, state: str, rms: float | None = 0.5) -> None:
        h.record(WindowResult("d", "v1", score, 0.2, now[0], 0, {} if rms is None else {"rms_0": rms, "rms_1": 2 * rms}),
                 state)

    window(0.1, "calibrating")
    now[0] += 0.3
    window(0.4, "warning")
    now[0] += 0.3
    window(0.15, "normal", rms=None)
    snap = h.snapshot()
    assert snap["score"] == [0.4] and snap["state"] == ["warning"] and snap["rms"] == [1.0] and snap["windows"] == 3
    now[0] += 1.0
    window(math.inf, "critical", rms=None)  # an over-range span
    snap = h.snapshot()
    assert snap["score"] == [0.4, None] and snap["state"][-1] == "critical" and snap["rms"][-1] is None
    for _ in range(10):
        now[0] += 1.0
        window(0.1, "normal")
    assert len(h.snapshot()["t"]) == 5
    for kind in ("raised", "escalated", "cleared"):
        h.record_event(AlertEvent(kind, "critical", "d", "v1", math.inf, 0.2, now[0], 0, {}, 3, now[0]))
    events = h.snapshot()["alerts"]
    assert [e["kind"] for e in events] == ["escalated", "cleared"] and events[0]["score"] is None
    json.dumps(h.snapshot(), allow_nan=False)


def test_json_safe():
    assert json_safe({"a": [math.nan, 1.5, math.inf], 2: (None, "x")}) == {"a": [None, 1.5, None], "2": [None, "x"]}


def test_stale_snapshot_is_reported(agent):
    doc, age = agent.snapshot()
    assert age < 5 and doc["sensors_total"] == 2
    agent._refresh_snapshot(time.monotonic() - 30)  # a scoring loop that stopped 30 s ago
    body = json.loads(_get(agent.web.port, "/api/status")[2])
    assert body["gateway"]["status_age_s"] >= 30
