"""Headless Chromium from Debian's packages (``chromium``, ``chromium-driver``), driven with Selenium: for the
status-page screenshot (scripts/status_page_screenshot.py) and the tests' ``browser`` fixture (tests/conftest.py).

Nothing is downloaded: Selenium is pointed at ``/usr/bin/chromedriver`` and ``/usr/bin/chromium`` (or
``$CHROMEDRIVER`` / ``$CHROMIUM``), so its driver manager never runs. A fresh profile per browser.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def available() -> bool:
    """Whether Chromium and its driver are installed (executable at ``CHROMIUM`` and ``CHROMEDRIVER``)."""
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A Selenium ``WebDriver`` on headless Chromium with a ``width`` x ``height`` window; quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
