"""The machine's condition and its trend over weeks on the status page, in headless Chromium (issue 17, items 2, 4,
5): a real agent on ptys streams the simulator's growing outer-race fault; its card shows the velocity in mm/s with
the ISO zone as a coloured chip beside the anomaly badge (never instead of it), the last alert's stage in maintenance
words, its reason, where the error is and the bearing verdict; a sensor whose units are unknown says why it has no
velocity. The trend file holds 30 days before the test (written through ``TrendStore`` by the test: a slow rise of
the velocity and two alert episodes, one of them with markup in its reason) and the minutes the agent scores: the
24 h, 1 h and 30 d charts draw one point per row the gateway serves, the episodes are shaded, and the span's CSV
link answers with its header. ``DOCS_FIGURES=1`` also saves the pictures to docs/figures (the maintenance docs')."""

from __future__ import annotations

import json
import math
import os
import time
import urllib.request
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from edge_agent.agent import Agent
from edge_agent.contract.bundle import Bundle
from edge_agent.trend import TrendStore
from firmware_sim.link import PtyLink
from firmware_sim.signals import PRESETS
from tests.agent.gateway_helpers import gateway_config, running
from tests.agent.pipeline_helpers import RATE, frames_of
from tests.waiting import wait_for

HOSTILE = "<img src=x onerror=alert(1)>"
DAY = 86400.0
#: ISO 10816-3 group 2, rigid foundation: the A/B, B/C, C/D boundaries (mm/s), as configured below.
BOUNDS = (1.4, 2.8, 4.5)
#: The zone chip's background per zone (status.css).
CHIP = {"A": "rgb(46, 139, 87)", "B": "rgb(165, 212, 106)", "C": "rgb(242, 169, 0)", "D": "rgb(211, 48, 47)"}


def _zone(v: float) -> str:
    return "ABCD"[sum(v > b for b in BOUNDS)]


def _seed_trend(path: Path, device: str, threshold: float, now: float) -> list[tuple[float, float]]:
    """30 days of ``device``'s trend before ``now`` (hourly rows up to a day ago, then one a minute), written by the
    gateway's own store: a healthy score with a daily swing, the velocity rising slowly from 0.6 to 0.95 mm/s (zone
    A: the live machine runs at about 1 mm/s), a 5-hour "changed" episode 9 days ago with the velocity up in zone B
    (1.6 mm/s), and a 40-minute one 18 hours ago. Returns the episodes (start, end)."""
    episodes = [(now - 9 * DAY, now - 9 * DAY + 5 * 3600), (now - 18 * 3600, now - 18 * 3600 + 2400)]
    store = TrendStore(path).open()
    try:
        t = now - 30 * DAY
        while t < now - 120:
            age = (now - t) / (30 * DAY)
            swing = math.sin(2 * math.pi * t / DAY)
            alert = any(a <= t < b for a, b in episodes)
            score = threshold * ((1.6 + 0.2 * swing) if alert else (0.62 + 0.06 * swing + 0.03 * math.sin(t / 977)))
            velocity = (1.6 if t < now - DAY else 1.1) if alert else 0.6 + 0.35 * (1 - age) + 0.04 * swing
            store.add(device, t, score, threshold, "warning" if alert else "normal", rms=0.04 * velocity,
                      velocity=velocity, zone=_zone(velocity))
            t += 3600.0 if t < now - DAY else 60.0
        for i, (a, b) in enumerate(episodes):
            reason = "3 of the last 5 windows above the threshold" + (f" {HOSTILE}" if i else "")
            store.add_event(device, a, "raised", "warning", reason)
            store.add_event(device, b, "cleared", "normal", "back under the clear level for 5 windows")
        store.flush()
    finally:
        store.close()
    return episodes


#: What the test reads of a card, in one script run (argument: the device id).
_CARD = """
const card = Array.from(document.querySelectorAll('section.card')).find(c => c.dataset.sensor === arguments[0]);
if (!card) return null;
const q = s => card.querySelector(s);
const trend = q('.trend');
const line = q('svg.trend-score path.trend-score-line');
const zone = q('.severity .zone');
return {
  badge: q('.badge').textContent.trim().toLowerCase(),
  badge_state: q('.badge').dataset.state,
  severity_shown: getComputedStyle(q('.severity')).display !== 'none',
  answer_controls_shown: getComputedStyle(q('.answer-controls')).display !== 'none',
  writer_shown: getComputedStyle(document.getElementById('writer')).display !== 'none',
  velocity: q('.severity .velocity').textContent,
  zone: zone.textContent, zone_attr: zone.dataset.zone, zone_colour: getComputedStyle(zone).backgroundColor,
  zone_title: zone.title,
  condition: q('.condition').hidden ? null : q('.condition').textContent,
  last_alert: q('.last-alert').hidden ? null : q('.last-alert').textContent,
  stage: q('.last-alert').dataset.stage,
  explanation_channel: q('.last-alert .explanation') ? q('.last-alert .explanation').dataset.channel : null,
  verdict: q('.last-alert .bearing') ? q('.last-alert .bearing').dataset.verdict : null,
  span: trend.dataset.span, rows: trend.dataset.rows, episodes: trend.dataset.episodes,
  pressed: Array.from(trend.querySelectorAll('.spans button[aria-pressed="true"]')).map(b => b.dataset.span),
  points: line ? line.dataset.points : null,
  path_d: line ? line.getAttribute('d') : null,
  threshold_path: !!q('svg.trend-score path.trend-threshold'),
  velocity_points: q('svg.trend-velocity').dataset.points,
  episode_rects: Array.from(trend.querySelectorAll('svg.trend-score rect.episode')).map(
    r => [r.getAttribute('class'), r.querySelector('title').textContent]),
  states: Array.from(trend.querySelectorAll('rect.state-strip')).map(r => r.dataset.state),
  zones: Array.from(trend.querySelectorAll('rect.zone-strip')).map(r => r.dataset.zone),
  csv: q('a.trend-csv').getAttribute('href'), csv_text: q('a.trend-csv').textContent,
  msg: q('.trend-msg').hidden ? null : q('.trend-msg').textContent,
  images: document.getElementsByTagName('img').length,
};
"""


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def test_the_card_shows_velocity_zone_and_the_alert_and_the_trend_draws_every_span(
        tmp_path, browser, agent_bundle, degrading_samples) -> None:
    p, g = PRESETS["ims"], PRESETS["ims"].geometry
    links = {"pump-1": PtyLink(tmp_path / "tty1", write_timeout=10), "fan-2": PtyLink(tmp_path / "tty2", write_timeout=10)}
    threshold = Bundle.load(agent_bundle).threshold.value
    trend_file = tmp_path / "trend.sqlite"
    now = time.time()
    episodes = _seed_trend(trend_file, "pump-1", threshold, now)
    keys = {"pump-1": {"asset": "Cooling pump 1, drive end", "location": "Hall 3, bay 2",
                       "severity": {"units": "g", "machine_group": 2, "foundation": "rigid"},
                       "bearing": {"shaft_rpm": p.rpm, "rolling_elements": g.n_balls, "ball_diameter": g.ball_d,
                                   "pitch_diameter": g.pitch_d, "contact_angle_deg": g.contact_deg}},
            "fan-2": {"asset": "Exhaust fan 2"}}  # the bundle records no units: no velocity, and the page says why
    agent = Agent(gateway_config(tmp_path, agent_bundle, links, sensor_keys=keys, source={"sample_rate": RATE},
                                 status={"trend_file": str(trend_file)}))
    frames = frames_of(degrading_samples, 1024)
    healthy = len(frames) // 2  # the defect starts at 60 % of the recording
    wait = WebDriverWait(browser, 30, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    read = lambda device="pump-1": browser.execute_script(_CARD, device)  # noqa: E731
    pump = agent.sensor("pump-1")

    def send(a: int, b: int, devices=("pump-1", "fan-2")) -> None:
        for f in frames[a:b]:
            for d in devices:
                links[d].send(f)
        assert wait_for(lambda: pump.pipeline.windower.counters.samples_in >= b * 1024, 30)

    def served(span: str) -> dict:
        return json.loads(_get(f"{agent.web.url}api/sensors/pump-1/trend?span={span}")[2])

    def drawn(span: str):
        """The card once its trend shows ``span`` with one point per scored row the gateway serves now."""
        def check(_):
            page = read()
            if not page or page["span"] != span or page["points"] is None:
                return False
            rows = served(span)["rows"]
            scored = sum(r[2] is not None for r in rows)
            return page if int(page["points"]) == scored and int(page["rows"]) == len(rows) else False
        return wait.until(check)

    try:
        with running(agent):
            assert wait_for(lambda: agent.web.port is not None, 10)
            browser.set_window_size(1400, 2400)  # the whole card in one picture
            browser.get(f"{agent.web.url}?poll=500&trend=1000")
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "section.card")) == 2)
            send(0, healthy)
            send(healthy, len(frames), devices=("pump-1",))  # pump-1's bearing fails; fan-2 stays quiet
            assert wait_for(lambda: pump.status()["alert_state"] in ("warning", "critical"), 30)
            # the history is live, the status document is refreshed every 0.2 s: both must show the alert
            wait.until(lambda b: (c := read()) and c["verdict"] and c["severity_shown"]
                       and c["badge"] in ("warning", "critical"))
            status, history = pump.status(), pump.history.snapshot()
            fan = wait.until(lambda b: (c := read("fan-2")) and c["condition"] and c)
            day = drawn("24h")
            card = read()
            day_png = browser.find_element(By.CSS_SELECTOR, 'section.card[data-sensor="pump-1"]').screenshot_as_png
            code, ctype, csv_text = _get(agent.web.url.rstrip("/") + card["csv"])
            browser.find_element(By.CSS_SELECTOR, 'section.card[data-sensor="pump-1"] button[data-span="1h"]').click()
            hour = drawn("1h")
            browser.find_element(By.CSS_SELECTOR, 'section.card[data-sensor="pump-1"] button[data-span="30d"]').click()
            month = drawn("30d")
            month_rows = served("30d")["rows"]
            month_png = browser.find_element(By.CSS_SELECTOR, 'section.card[data-sensor="pump-1"] .trend').screenshot_as_png
            code30, _, csv30 = _get(agent.web.url.rstrip("/") + month["csv"])
    finally:
        for link in links.values():
            link.close()

    # velocity and zone beside the anomaly badge, never instead of it
    cond = status["condition"]
    assert card["badge"] in ("warning", "critical") and card["badge_state"] == card["badge"]
    assert cond["zone"] in "ABCD" and cond["velocity_mm_s"] > 0
    assert card["zone"] == f"zone {cond['zone']}" and card["zone_attr"] == cond["zone"]
    assert card["zone_colour"] == CHIP[cond["zone"]], card["zone_colour"]
    assert card["velocity"].endswith(" mm/s") and float(card["velocity"].split()[0]) > 0
    assert cond["zone_meaning"] in card["zone_title"] and "10816-3" in card["condition"]
    # a read-only gateway: the alert is shown, the answer buttons and the token field are not
    assert not card["answer_controls_shown"] and not card["writer_shown"]
    # the last alert in maintenance words, why, where, and the bearing
    last = [e for e in history["alerts"] if e["kind"] in ("raised", "escalated")][-1]
    assert card["stage"] == last["stage"] and card["stage"] in ("changed", "degrading")
    assert ("Degrading: act" if card["stage"] == "degrading" else "Changed: watch it") in card["last_alert"]
    assert last["reason"] and last["reason"] in card["last_alert"]
    assert card["explanation_channel"] == last["explanation"]["channels"][0]["name"]
    assert last["explanation"]["summary"] in card["last_alert"]
    assert card["verdict"] == last["condition"]["bearing_verdict"] == status["condition"]["bearing_verdict"]
    # fan-2: no units, so no velocity and no chip, and the reason in words
    assert not fan["severity_shown"] and fan["condition"].startswith("No vibration velocity: ")
    assert "unit" in fan["condition"], fan["condition"]
    # 24 h: one point per scored minute served (the day's minutes written before the test and the live ones)
    assert card["pressed"] == ["24h"] and card["threshold_path"] and card["msg"] is None
    assert int(day["points"]) >= 1300 and day["path_d"].startswith("M")
    assert int(day["velocity_points"]) >= 1300 and "A" in day["zones"]
    # the episodes: the 40-minute one of 18 h ago (its reason is text, markup and all), then the live alert, open
    assert int(day["episodes"]) == len(day["episode_rects"]) >= 2
    assert HOSTILE in day["episode_rects"][0][1] and day["images"] == 0
    assert "warning alert" in day["episode_rects"][0][1] and "still active" in day["episode_rects"][-1][1]
    assert {"normal", "warning"} <= set(day["states"]) and set(day["states"]) & {"warning", "critical"}
    assert code == 200 and ctype.startswith("text/csv") and card["csv"].endswith("trend.csv?span=24h")
    header = csv_text.splitlines()[0]
    assert header == "time_utc,windows,score_max,score_mean,threshold,rms_max,velocity_max,zone,state,alerts,over_range"
    assert len(csv_text.splitlines()) - 1 >= int(day["rows"]) - 1 and card["csv_text"] == "CSV of 24 h"
    # 1 h: the last hour's minutes; 30 d: hourly rows back to the first, both episodes before today, and the live one
    assert hour["pressed"] == ["1h"] and 50 <= int(hour["points"]) <= 62
    assert int(hour["episodes"]) == int(day["episodes"]) - 1  # the live alert(s), not the one of 18 h ago
    assert month["pressed"] == ["30d"] and int(month["points"]) == len(month_rows) >= 29 * 24
    assert month_rows[0][0] <= episodes[0][0] and int(month["episodes"]) == int(day["episodes"]) + 1
    assert {"A", "B"} <= set(month["zones"])
    assert code30 == 200 and len(csv30.splitlines()) == len(month_rows) + 1 and month["csv"].endswith("span=30d")
    for png, name in ((day_png, "status-page-trend-24h.png"), (month_png, "status-page-trend-30d.png")):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        (tmp_path / name).write_bytes(png)
        if os.environ.get("DOCS_FIGURES"):
            (Path(__file__).resolve().parents[2] / "docs" / "figures" / name).write_bytes(png)


def test_a_trend_file_that_is_not_the_gateways_costs_the_charts_and_the_page_says_why(tmp_path, browser,
                                                                                      agent_bundle) -> None:
    """The trend file holds something else: the agent leaves it untouched and runs on; the page shows why there is
    no trend instead of charts, and no CSV link."""
    link = PtyLink(tmp_path / "tty1", write_timeout=10)
    foreign = tmp_path / "notes.sqlite"
    foreign.write_text("shift notes, not a trend\n")
    agent = Agent(gateway_config(tmp_path, agent_bundle, {"pump-1": link}, status={"trend_file": str(foreign)}))
    wait = WebDriverWait(browser, 20, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    try:
        with running(agent):
            assert wait_for(lambda: agent.web.port is not None, 10)
            browser.get(f"{agent.web.url}?poll=300&trend=1000")
            page = wait.until(lambda b: (c := b.execute_script(_CARD, "pump-1")) and c["msg"] and c)
            shown = browser.execute_script("""
                const t = document.querySelector('section.card .trend');
                return [t.querySelector('.trend-charts').hidden, t.querySelector('a.trend-csv').hidden];""")
            error = agent.status()["trend"]["error"]
    finally:
        link.close()
    assert error and "holds something else" in error
    assert page["msg"] == f"No trend on this gateway: {error}" and page["rows"] == "0"
    assert shown == [True, True]
    assert foreign.read_text() == "shift notes, not a trend\n"
