"""Fixtures shared by every test folder: a real mosquitto, and the shared real recordings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import Broker, require_mosquitto

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A running mosquitto on a free loopback port; stopped at the end of the test.

    A missing mosquitto fails the test, naming the fix (``make setup`` installs it): never a silent skip.
    """
    try:
        require_mosquitto()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder (``$SHARED_DATA`` or ``../shared/data``); skips if absent."""
    for cand in (os.environ.get("SHARED_DATA"), REPO.parent / "shared" / "data", "/work/shared/data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    pytest.skip("real recordings not available (no ../shared/data): statistics not checked")


@pytest.fixture
def browser():
    """Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) under Selenium.

    Skipped where they are not installed, except under CI (``CI`` set), where that is a failure.
    """
    from firmware_sim import browser as b

    if not b.available():
        if os.environ.get("CI"):
            pytest.fail(f"{b.CHROMIUM} / {b.CHROMEDRIVER} not found: .ci/run should have installed them")
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    with b.chromium() as driver:
        yield driver
