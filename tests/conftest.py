"""Fixtures shared by every test folder: a real mosquitto, a real S3-compatible object store (SeaweedFS), the shared
real recordings, headless Chromium, and real bundles trained by the trainer with the sensor data to feed them.

The bundles are trained once per test session, and only when a test asks for one (cached under pytest's base
temp dir): firmware_sim's healthy IMS-like bearing signal (4 channels, 20 kHz) -> features mode (blocks of 1024
samples, rms/peak/kurtosis/crest) -> a small Conv1D autoencoder -> full-int8 TFLite, through
``trainer.pipeline.run`` (this is the only place the tests touch TensorFlow; the agent never does). Helpers for
them are in ``tests/agent/pipeline_helpers.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contract.bundle import MANIFEST_FILE
from firmware_sim.broker import Broker, require_mosquitto
from firmware_sim.objectstore import S3Server, require_weed
from tests.agent.pipeline_helpers import LIFE_S, RATE, running_machine

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
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A running S3-compatible object store (SeaweedFS, ``firmware_sim.objectstore``) on free loopback ports, one per
    test session; tests make their own buckets (``s3_dataset``). A test that stops it uses its own ``S3Server``.

    A missing ``weed`` fails the test, naming the fix (``make setup`` installs the dev extra): never a silent skip.
    """
    try:
        require_weed()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    server = S3Server(tmp_path_factory.mktemp("s3-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_dataset(s3_server: S3Server, monkeypatch) -> str:
    """``s3://<a new bucket>/fleet``, with the store's credentials, endpoint and region in the environment (as S3 tools
    take them: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.create_bucket(f"fleet-{uuid.uuid4().hex[:12]}") + "/fleet"


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



def _train(root: Path) -> Path:
    from firmware_sim import signals
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    root.mkdir(parents=True, exist_ok=True)
    healthy = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=1), RATE * 30)
    np.save(root / "healthy.npy", healthy)
    opts = TrainOptions(
        data=root / "healthy.npy", out=root / "bundle", format="npy", mode="features", window=8, hop=2, block=1024,
        features=("rms", "peak", "kurtosis", "crest"), model=ModelConfig(architecture="conv1d", units=(16, 8), latent=4),
        fit=FitConfig(epochs=30, batch_size=16, patience=5), quantize="int8", latency_windows=50, model_id="test-conv",
    )
    return run(opts).bundle


@pytest.fixture(scope="session")
def agent_bundle(tmp_path_factory) -> Path:
    """Path of a real int8 features-mode bundle (read-only: copy it before changing anything)."""
    root = tmp_path_factory.getbasetemp() / "agent-bundle"
    bundle = root / "bundle"
    if not (bundle / MANIFEST_FILE).exists():
        _train(root)
    return bundle


@pytest.fixture(scope="session")
def degrading_samples(tmp_path_factory) -> np.ndarray:
    """(20 s * 20 kHz, 4) float32: healthy, then a bearing defect from ``ONSET_S`` on (cached)."""
    path = tmp_path_factory.getbasetemp() / "degrading.npy"
    if not path.exists():
        from firmware_sim import signals

        src = signals.make_source("bearing", state="degrading", preset="ims", seed=2, life_s=LIFE_S)
        np.save(path, signals.generate(src, int(RATE * LIFE_S)))
    return np.load(path)


@pytest.fixture(scope="session")
def bands_bundle(tmp_path_factory) -> Path:
    """A bundle with the representation the trainer picks by default for raw vibration (``trainer.recipe``):
    rms, kurtosis, peak, crest and octave-band energies (FFT) per block of a tenth of a snapshot; short training."""
    root = tmp_path_factory.getbasetemp() / "bands-bundle"
    bundle = root / "bundle"
    if (bundle / MANIFEST_FILE).exists():
        return bundle
    from firmware_sim import signals
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.recipe import FEATURES, octave_bands
    from trainer.train import FitConfig

    root.mkdir(parents=True, exist_ok=True)
    healthy = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=1), RATE * 20)
    np.save(root / "healthy.npy", healthy)
    opts = TrainOptions(
        data=root / "healthy.npy", out=bundle, format="npy", mode="features", window=10, hop=10, block=819,
        features=FEATURES, fft_bands=octave_bands(RATE), load_options={"sample_rate": RATE},
        model=ModelConfig(architecture="conv1d", units=(16, 8), latent=4),
        fit=FitConfig(epochs=20, batch_size=16, patience=5), quantize="int8", latency_windows=50, model_id="test-bands",
    )
    return run(opts).bundle


@pytest.fixture(scope="session")
def noise_bundle(tmp_path_factory) -> Path:
    """A float32 raw-mode bundle of one channel at 1 Hz (windows of 24 samples, hop 4, small Conv1D) trained on 2880 s of
    ``running_machine`` noise: the machine's noise is what it cannot reconstruct, so a machine gone quiet is too good."""
    root = tmp_path_factory.getbasetemp() / "noise-bundle"
    bundle = root / "bundle"
    if (bundle / MANIFEST_FILE).exists():
        return bundle
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "running.npy", running_machine(2880, seed=1))
    opts = TrainOptions(
        data=root / "running.npy", out=bundle, format="npy", mode="raw", window=24, hop=4,
        load_options={"sample_rate": 1.0}, model=ModelConfig(architecture="conv1d", units=(16, 8), latent=4),
        fit=FitConfig(epochs=30, batch_size=16, patience=5), quantize="float32", latency_windows=20,
        model_id="test-noise",
    )
    return run(opts).bundle
