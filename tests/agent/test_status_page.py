"""The status page in a real browser: it loads, its chart follows the windows as they are scored, and an alert
shows up on the sensor that raised it (and only there); a model version full of markup stays text; a sensor
that is not monitored is never green, and an over-range alert says what to check."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edge_agent.agent import Agent
from firmware_sim.link import PtyLink
from tests.agent.gateway_helpers import gateway_config, running
from tests.agent.pipeline_helpers import frames_of, rewrite_bundle
from tests.waiting import wait_for

#: a model version (the bundle's, free text): the page must show it as text, never as markup. Device ids cannot
#: carry markup (contract.topics).
HOSTILE = "<img src=x onerror=alert(1)>"
OTHER = "fan-2"


def _card(browser, device: str):
    return next(c for c in browser.find_elements(By.CSS_SELECTOR, "section.card")
                if c.get_attribute("data-sensor") == device)


#: Everything the test checks once the alert shows, read in one script run (arguments: the two device ids).
_SNAPSHOT = """
const card = id => Array.from(document.querySelectorAll('section.card')).find(c => c.dataset.sensor === id);
const [c1, c2] = [card(arguments[0]), card(arguments[1])];
const banner = document.getElementById('banner');
return {
  badge1: c1.querySelector('.badge').textContent.trim().toLowerCase(),
  bands1: c1.querySelectorAll('svg.chart rect.band').length,
  hits1: c1.querySelectorAll('svg.chart circle.hit').length,
  stats1: c1.querySelector('dl.stats').textContent,
  counters1: Array.from(c1.querySelectorAll('table.counters tr')).map(r => r.dataset.key),
  state2: c2.dataset.state,
  alert_rows2: c2.querySelectorAll('table.alerts tbody tr').length,
  title2: c2.querySelector('h2').textContent,
  summary: document.getElementById('summary').textContent,
  banner_shown: !!banner && banner.offsetParent !== null && getComputedStyle(banner).display !== 'none',
  images: document.getElementsByTagName('img').length,
};
"""


def _points(browser, device: str) -> int:
    try:
        return int(_card(browser, device).find_element(By.CSS_SELECTOR, "svg.chart").get_attribute("data-points") or 0)
    except (StopIteration, StaleElementReferenceException):
        return 0


def test_the_page_follows_the_scores_and_shows_the_alert(tmp_path, browser, agent_bundle, degrading_samples):
    links = {"pump-1": PtyLink(tmp_path / "tty1", write_timeout=10),
             OTHER: PtyLink(tmp_path / "tty2", write_timeout=10)}
    bundle = tmp_path / "bundle"
    shutil.copytree(agent_bundle, bundle)
    rewrite_bundle(bundle, version=HOSTILE)
    agent = Agent(gateway_config(tmp_path, bundle, links))
    frames = frames_of(degrading_samples, 1024)
    first, healthy = len(frames) // 8, len(frames) // 2  # the defect starts at 60 % of the recording
    # the page re-renders every poll: an element found in one call may be gone by the next (retried, not failed)
    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    p1 = agent.sensor("pump-1")

    def send(a: int, b: int, devices=("pump-1", OTHER)) -> float:
        for f in frames[a:b]:
            for d in devices:
                links[d].send(f)
        assert wait_for(lambda: p1.pipeline.windower.counters.samples_in >= b * 1024, 20)
        return time.time()

    try:
        with running(agent):
            assert wait_for(lambda: agent.web.port is not None, 10)
            browser.get(f"{agent.web.url}?poll=300")
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "section.card")) == 2)
            assert browser.find_element(By.ID, "gateway").text == "hall-3"
            wait.until(lambda b: "no window scored yet" in _card(b, "pump-1").text)

            sent = send(0, first)
            wait.until(lambda b: _points(b, "pump-1") >= 1)
            before = _points(browser, "pump-1")
            wait.until(lambda b: _card(b, "pump-1").find_element(By.CSS_SELECTOR, ".badge").text.lower() == "normal")
            # history points are per second of scoring: the next batch, a second later, adds a point
            assert wait_for(lambda: int(time.time()) > int(sent), 2)
            send(first, healthy)
            wait.until(lambda b: _points(b, "pump-1") > before)
            wait.until(lambda b: _card(b, "pump-1").find_elements(By.CSS_SELECTOR, "polyline.threshold"))

            send(healthy, len(frames), devices=("pump-1",))  # pump-1 fails; the other stays quiet
            wait.until(lambda b: _card(b, "pump-1").find_elements(By.CSS_SELECTOR, 'table.alerts tr[data-kind="raised"]'))
            wait.until(lambda b: _card(b, "pump-1").get_attribute("data-state") in ("warning", "critical"))
            # one synchronous read of the page (the page re-renders every poll: elements held across calls go stale)
            page = browser.execute_script(_SNAPSHOT, "pump-1", OTHER)
            assert page["badge1"] in ("warning", "critical")
            assert page["bands1"] and page["hits1"], "the alert period is shaded, windows above the threshold marked"
            assert page["state2"] == "normal" and page["alert_rows2"] == 0
            assert "test-conv" in page["stats1"]  # the served model
            assert {"frames_dropped", "crc_errors", "gaps", "samples_invalid"} <= set(page["counters1"])
            assert "1 alerting" in page["summary"]
            assert not page["banner_shown"]
            assert page["title2"] == OTHER and HOSTILE in page["stats1"] and page["images"] == 0
            png = browser.get_screenshot_as_png()
    finally:
        for link in links.values():
            link.close()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    (tmp_path / "status-page.png").write_bytes(png)


#: The two cards of the truth-at-a-glance test, read in one script run (arguments: the two device ids).
_VERDICTS = """
const card = id => Array.from(document.querySelectorAll('section.card')).find(c => c.dataset.sensor === id);
const read = c => ({
  badge: c.querySelector('.badge').textContent.trim().toLowerCase(),
  state: c.dataset.state,
  colour: getComputedStyle(c.querySelector('.badge')).backgroundColor,
  border: getComputedStyle(c).borderTopColor,
  second: c.querySelector('.alert-badge').hidden ? null : c.querySelector('.alert-badge').textContent,
  health: c.querySelector('.health').textContent,
  advice: c.querySelector('.advice').hidden ? null : c.querySelector('.advice').textContent,
  advice_key: c.querySelector('.advice').dataset.key,
  where: c.querySelector('.where').textContent,
  stats: c.querySelector('dl.stats').textContent,
});
return {pump: read(card(arguments[0])), press: read(card(arguments[1]))};
"""
GREEN = "rgb(227, 243, 234)"  # the NORMAL badge's background (status.css)


def test_a_sensor_not_monitored_is_never_green_and_an_over_range_alert_says_what_to_check(
        tmp_path, browser, agent_bundle, degrading_samples):
    """The issue's findings: a sensor whose port is missing showed a green NORMAL badge (only a red line said "no
    data"), and an over-range alert showed a last score below the threshold with no hint. Now the dead sensor has
    its own badge and colour, the reason and what to do; the saturated one says it is over range and what to check;
    both show their asset and location. ``DOCS_FIGURES=1`` also saves the page to docs/figures (the maintenance
    docs' picture)."""
    from edge_agent.advice import AdviceTexts
    from tests.agent.pipeline_helpers import RATE

    link = PtyLink(tmp_path / "tty1", write_timeout=10)
    absent = tmp_path / "ttyUSB-press-4"  # the port of a sensor whose cable is unplugged: it never appears
    keys = {"pump-1": {"asset": "Cooling pump 1, drive end", "location": "Hall 3, bay 2"},
            "press-4": {"asset": "Hydraulic press 4", "location": "Hall 3, bay 5", "health": {"no_data_s": 1.0}}}
    agent = Agent(gateway_config(tmp_path, agent_bundle, {"pump-1": link, "press-4": absent}, sensor_keys=keys))
    healthy = np.ascontiguousarray(degrading_samples[: RATE * 2])
    shaking = np.clip(healthy * 50.0, -40.0, 40.0)  # far beyond the 10 g full scale: the int16 codes saturate
    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    p1 = agent.sensor("pump-1")
    try:
        with running(agent):
            assert wait_for(lambda: agent.web.port is not None, 10)
            browser.get(f"{agent.web.url}?poll=250")
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "section.card")) == 2)
            seen = set()
            # before and after its no-data limit, the dead sensor is never NORMAL
            def press_unmonitored(b) -> bool:
                v = b.execute_script(_VERDICTS, "pump-1", "press-4")["press"]
                seen.add(v["badge"])
                return v["state"] == "unmonitored"
            wait.until(press_unmonitored)
            assert "normal" not in seen, seen
            for f in frames_of(healthy, 1024):
                link.send(f)
            assert wait_for(lambda: p1.pipeline.counters.windows_scored > 0, 20)
            wait.until(lambda b: b.execute_script(_VERDICTS, "pump-1", "press-4")["pump"]["badge"] == "normal")
            normal = browser.execute_script(_VERDICTS, "pump-1", "press-4")["pump"]
            for f in frames_of(shaking, 1024, seq0=len(healthy) // 1024 * 1024):  # no gap between the two
                link.send(f)
            assert wait_for(lambda: p1.pipeline.counters.over_range_spans >= 3, 20)
            wait.until(lambda b: b.execute_script(_VERDICTS, "pump-1", "press-4")["pump"]["advice_key"] == "over_range")
            page = browser.execute_script(_VERDICTS, "pump-1", "press-4")
            png = browser.get_screenshot_as_png()
    finally:
        link.close()
    texts = AdviceTexts()
    press, pump = page["press"], page["pump"]
    # the dead sensor: its own badge and colour, the reason, what to do, where it is
    assert press["badge"] == "not monitored" and press["colour"] != GREEN and press["colour"] != normal["colour"]
    assert press["border"] != normal["border"]
    assert press["health"].startswith("no data: no data for") and "is not open" in press["health"]
    assert press["advice"] == "What to do: " + texts.no_data and press["advice_key"] == "no_data"
    assert press["where"] == "Hydraulic press 4 · Hall 3, bay 5"
    # the healthy sensor was green, with nothing to do; saturated, it says over range and what to check
    assert normal["colour"] == GREEN and normal["advice"] is None and normal["where"] == "Cooling pump 1, drive end · Hall 3, bay 2"
    assert pump["badge"] == "critical" and pump["second"] is None
    assert "over range (saturated input)" in pump["stats"]
    assert pump["advice"] == "What to do: " + texts.over_range
    assert "range setting" in pump["advice"] and "mounting" in pump["advice"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    (tmp_path / "status-page-not-monitored.png").write_bytes(png)
    if os.environ.get("DOCS_FIGURES"):
        (Path(__file__).resolve().parents[2] / "docs" / "figures" / "status-page-not-monitored.png").write_bytes(png)
