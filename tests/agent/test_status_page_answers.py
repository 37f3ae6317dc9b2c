"""Answering an alert from the status page, in headless Chromium (issue 17, item 6): without a write token the page
has no answer buttons; with one, a technician types the token and their name, acknowledges the alert, then calls
it a false alarm, and the alert's next upload record carries the answer; a page on another origin that submits a
form to the gateway is refused and counted. ``DOCS_FIGURES=1`` also saves the page to docs/figures (the maintenance
docs' picture)."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edge_agent.agent import Agent
from edge_agent.contract import topics
from edge_agent.contract.upload_record import decode_record
from firmware_sim.link import PtyLink
from tests.agent.answer_helpers import TOKEN, Watcher, until_alert
from tests.agent.gateway_helpers import gateway_config, running
from tests.agent.pipeline_helpers import RATE, frames_of
from tests.waiting import wait_for

#: What the page shows of pump-1's answers, read in one script run.
_ANSWERS = """
const card = Array.from(document.querySelectorAll('section.card')).find(c => c.dataset.sensor === 'pump-1');
if (!card) return {};  // not drawn yet (the page renders after its first poll)
const box = card.querySelector('.answer-box');
return {
  writer: !document.getElementById('writer').hidden,
  controls: !box.querySelector('.answer-controls').hidden && !box.hidden,
  alert: box.dataset.alert,
  summary: box.querySelector('.answer-summary').textContent,
  answered: box.querySelector('.answer-summary').dataset.answer,
  msg: box.querySelector('.answer-msg').textContent,
  ack_disabled: box.querySelector('button.ack').disabled,
  rows: Array.from(card.querySelectorAll('table.alerts tbody tr')).map(r => [r.dataset.kind, r.dataset.answer || '',
                                                                             r.textContent]),
};
"""


def _cross_site_page(gateway_port: int) -> tuple[http.server.ThreadingHTTPServer, int]:
    """Another origin (another port of 127.0.0.1: same site, other origin) serving a page that submits a form to the
    gateway, as a malicious page would, with the body a form can send."""
    page = f"""<!doctype html><html><body>
<form id="f" method="POST" action="http://127.0.0.1:{gateway_port}/api/sensors/pump-1/answer" enctype="text/plain">
<input name='{{"kind":"silence","hours":168,"by":"evil","x":"' value='"}}'></form>
<script>document.getElementById('f').submit();</script></body></html>""".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def test_a_technician_answers_from_the_page_and_the_answer_reaches_the_next_upload_record(
        tmp_path, browser, agent_bundle, degrading_samples, mosquitto) -> None:
    link = PtyLink(tmp_path / "tty1", write_timeout=10)
    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    read = lambda: browser.execute_script(_ANSWERS)  # noqa: E731
    # a read-only gateway: no answer buttons, no token field
    (tmp_path / "ro").mkdir()
    read_only = Agent(gateway_config(tmp_path / "ro", agent_bundle, {"pump-1": link})).start()
    try:
        browser.get(f"{read_only.web.url}?poll=250")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "section.card"))
        wait.until(lambda b: b.execute_script("return document.body.dataset.updated"))
        page = read()
        assert not page["writer"] and not page["controls"]
        assert browser.find_element(By.ID, "mode").text == "Read-only status of this gateway"
    finally:
        read_only.close()

    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg = gateway_config(tmp_path, agent_bundle, {"pump-1": link}, http={"port": 0, "write_token_file": "token"},
                         mqtt={"host": mosquitto.host, "port": mosquitto.port}, source={"sample_rate": RATE},
                         uploads={"enabled": True, "receipts": False, "spool_path": str(tmp_path / "spool.sqlite"),
                                  "context_after": 1000},
                         sensor_keys={"pump-1": {"asset": "Cooling pump 1, drive end", "location": "Hall 3, bay 2",
                                                 "group": "centrifugal-pump"}})
    agent = Agent(cfg)
    watcher = Watcher(mosquitto, topics.upload_topic("pump-1"))
    frames = frames_of(degrading_samples, 1024)
    sensor = agent.sensor("pump-1")
    evil = None
    try:
        with running(agent):
            assert watcher.conn.wait_subscribed(10) and agent.wait_ready(10)
            browser.get(f"{agent.web.url}?poll=250")
            wait.until(lambda b: read().get("writer") and read().get("controls"))
            assert read()["ack_disabled"], "nothing to acknowledge before an alert"
            browser.find_element(By.ID, "by").send_keys("J. Smith")
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            nxt = until_alert(agent, link, frames, len(frames) // 2)
            alert = sensor.answers.alert_id()
            wait.until(lambda b: read()["alert"] == alert and not read()["ack_disabled"])
            browser.find_element(By.CSS_SELECTOR, 'section.card[data-sensor="pump-1"] button.ack').click()
            wait.until(lambda b: read()["msg"] == "Recorded: acknowledged by J. Smith.")
            browser.find_element(By.CSS_SELECTOR, 'section.card[data-sensor="pump-1"] button.false_alarm').click()
            wait.until(lambda b: read()["msg"] == "Recorded: false alarm by J. Smith.")
            wait.until(lambda b: read()["answered"] == "false_alarm")
            for f in frames[nxt:]:
                link.send(f)
            assert wait_for(lambda: any(decode_record(p).answer for p in watcher.payloads(topics.upload_topic("pump-1"))
                                        if decode_record(p).answer and decode_record(p).answer["kind"] == "false_alarm"),
                            30), "the next upload record carries the answer"
            wait.until(lambda b: [r[1] for r in read()["rows"] if r[0] == "answer"][:2] == ["false_alarm", "ack"])
            page = read()
            png = browser.get_screenshot_as_png()

            # another origin submits a form to the gateway: refused, counted, nothing recorded
            evil, evil_port = _cross_site_page(agent.web.port)
            before = agent.web.status()["writes_refused"].get("cross_site", 0)
            browser.get(f"http://127.0.0.1:{evil_port}/")
            assert wait_for(lambda: agent.web.status()["writes_refused"].get("cross_site", 0) == before + 1, 30)
            answers = sensor.answers.status()
    finally:
        link.close()
        watcher.conn.stop()
        if evil is not None:
            evil.shutdown()
    records = [decode_record(p) for p in watcher.payloads(topics.upload_topic("pump-1"))]
    carried = [r.answer for r in records if r.alert_ref == alert and r.answer]
    assert carried[-1]["kind"] == "false_alarm" and carried[-1]["by"] == "J. Smith"
    assert {r.group for r in records} == {"centrifugal-pump"}
    assert answers["answers"] == {"ack": 1, "false_alarm": 1} and answers["silenced_until"] is None
    assert "answer: false alarm by J. Smith" in page["summary"]
    rows = [r for r in page["rows"] if r[0] == "answer"]
    assert "by J. Smith (page)" in rows[0][2] and "false alarm" in rows[0][2]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    (tmp_path / "status-page-answer.png").write_bytes(png)
    if os.environ.get("DOCS_FIGURES"):
        (Path(__file__).resolve().parents[2] / "docs" / "figures" / "status-page-answer.png").write_bytes(png)
