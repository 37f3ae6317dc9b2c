"""The gateway's rollout state machine (edge_agent.rollout.SensorRollout) with real bundles, real signed messages
and real windows: swap after a clean shadow, rejection of what must not serve, probation rollback, memory."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import rollout as gw
from edge_agent.bundle_watch import load_served_model
from edge_agent.contract import preprocess
from edge_agent.contract import rollout as contract
from firmware_sim import signals
from tests.agent.pipeline_helpers import RATE, rewrite_bundle


class Gateway:
    """What the sensor gives a SensorRollout: its served model, a swap, and a retained-state publisher."""

    def __init__(self, bundle: Path, key: Ed25519PrivateKey, **policy) -> None:
        self.model = load_served_model(bundle)
        self.offered: list[str] = []
        self.states: list[dict] = []
        self.key = key
        policy = {"shadow_windows": 40, "probation_windows": 60, "min_probation_windows": 20} | policy
        self.rollout = gw.SensorRollout(
            "pump-1", bundle, gw.RolloutPolicy((contract.public_key_text(key.public_key()),), **policy),
            serving=lambda: self.model, offer_model=self.offer,
            publish=lambda topic, payload: self.states.append(json.loads(payload)))

    def offer(self, model) -> None:
        self.model = model
        self.offered.append(model.bundle.version)

    def send(self, bundle: Path, to: str = "pump-1", key: Ed25519PrivateKey | None = None,
             corrupt: bool = False) -> bytes:
        meta, chunks = contract.make_metadata(bundle, contract.pack_bundle(bundle), to, key or self.key, 8192)
        parsed = json.loads(meta)
        target, rid = parsed["target"], parsed["rollout_id"]
        if corrupt:
            chunks[1] = chunks[1][:100] + bytes([chunks[1][100] ^ 1]) + chunks[1][101:]
        for i, c in enumerate(chunks):  # chunks first, as retained messages may come
            self.rollout.on_message(contract.chunk_topic(target, rid, i), c)
        self.rollout.on_message(contract.meta_topic(target), meta)
        return meta

    def stream(self, windows: np.ndarray) -> None:
        """The scoring thread: the served model scores each window, the rollout observes it."""
        for w in windows:
            score = self.model.scorer.score(w)
            self.rollout.observe(w, score, self.model.bundle.threshold.value, self.model.bundle.version)
            self.rollout.step()


@pytest.fixture(scope="module")
def windows(agent_bundle: Path) -> np.ndarray:
    spec = load_served_model(agent_bundle).bundle.spec
    x = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=21), RATE * 12)
    return preprocess.windows(preprocess.steps(x, spec), spec.window, spec.hop)


@pytest.fixture
def site(agent_bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(the sensor's bundle path, a newer bundle of the same model)."""
    current = tmp_path / "bundle"
    shutil.copytree(agent_bundle, current)
    new = tmp_path / "build" / "new"
    shutil.copytree(agent_bundle, new)
    rewrite_bundle(new, version="test-conv-v2")
    return current, new


def test_a_good_rollout_is_shadowed_then_served(site, windows) -> None:
    current, new = site
    g = Gateway(current, Ed25519PrivateKey.generate())
    old = g.model.bundle.version
    meta = g.send(new)
    g.rollout.step()
    assert g.rollout.state == "shadow", g.rollout.reason
    g.stream(windows[:30])
    assert g.rollout.state == "shadow", "waits for shadow_windows windows of the serving model"
    g.stream(windows[30:45])
    assert g.rollout.state == "serving" and g.offered == ["test-conv-v2"]
    assert [s["state"] for s in g.states] == ["received", "verified", "shadow", "serving"]
    assert g.states[-1]["shadow_alert_rate"] <= g.states[-1]["serving_alert_rate"] + 0.05
    assert json.loads((current / "manifest.json").read_text())["model"]["version"] == "test-conv-v2"
    assert json.loads((gw.previous_path(current) / "manifest.json").read_text())["model"]["version"] == old
    g.stream(windows[45:120])
    assert g.rollout.status()["probation"] is False and g.rollout.state == "serving", "probation passed"
    assert not list(current.parent.glob(".bundle.rollout-*")), "no staging left behind"

    # a restart sees the retained rollout again: nothing happens twice
    again = Gateway(current, g.key)
    again.rollout.on_message(contract.meta_topic("device/pump-1"), meta)
    again.rollout.step()
    assert again.offered == [] and again.rollout.state == "serving"

    # by hand: edge-agent rollback puts the previous bundle back; the running rollout notices
    assert gw.rollback_files(current, "by hand") == old
    g.model = load_served_model(current)  # what the bundle watcher does
    g.rollout.step()
    assert g.rollout.state == "rolled_back" and g.rollout.reason == "by hand"


@pytest.mark.parametrize("case", ["wrong shape", "bad alert rate"])
def test_a_signed_rollout_that_must_not_serve_is_rejected_and_the_old_model_keeps_scoring(site, windows, case) -> None:
    current, new = site
    g = Gateway(current, Ed25519PrivateKey.generate())
    old = g.model.bundle.version
    if case == "wrong shape":
        meta, chunks = _other_shape(new, g.key)
        for i, c in enumerate(chunks):
            g.rollout.on_message(contract.chunk_topic("device/pump-1", meta["rollout_id"], i), c)
        g.rollout.on_message(contract.meta_topic("device/pump-1"), contract.canonical(meta["signed"]))
    else:  # a model that is above its threshold everywhere
        rewrite_bundle(new, manifest_edit=lambda m: m["threshold"].__setitem__("value", 1e-6))
        g.send(new)
    g.stream(windows[:50])
    assert g.rollout.state == "rejected", g.rollout.state
    assert g.states[-1]["state"] == "rejected" and g.states[-1]["reason"]
    assert g.offered == [] and g.model.bundle.version == old
    assert json.loads((current / "manifest.json").read_text())["model"]["version"] == old
    assert not gw.previous_path(current).exists()
    expected = {"wrong shape": "this sensor's model takes", "bad alert rate": "shadow: the new model is above"}
    assert expected[case] in g.rollout.reason


@pytest.mark.parametrize("case", ["foreign key", "unsigned junk chunk", "other sensor"])
def test_what_no_trusted_key_signed_is_ignored_and_cannot_stop_a_rollout(site, windows, case) -> None:
    """Issue 14, break 5: one unsigned junk message on a chunk topic used to cancel a legitimate rollout for good.
    Now a message that does not verify is counted and ignored; the legitimate rollout completes."""
    current, new = site
    g = Gateway(current, Ed25519PrivateKey.generate())
    old = g.model.bundle.version
    meta, chunks = contract.make_metadata(new, contract.pack_bundle(new), "pump-1", g.key, 8192)
    rid = json.loads(meta)["rollout_id"]
    if case == "foreign key":  # a whole rollout signed by a key the gateway does not trust, before the real one
        g.send(new, key=Ed25519PrivateKey.generate())
    elif case == "unsigned junk chunk":  # on the very topic of a chunk of the real rollout, before and after its meta
        g.rollout.on_message(contract.chunk_topic("device/pump-1", rid, 1), b"junk" * 40)
    else:
        g.send(new, to="fan-9")
    g.rollout.step()
    assert g.rollout.state == "idle" and g.offered == [] and g.model.bundle.version == old
    if case != "other sensor":
        assert g.rollout.counters.ignored >= 1 and g.rollout.last_ignored, g.rollout.counters
        assert ("unknown key" if case == "foreign key" else "no trusted key signed it") in g.rollout.last_ignored
    for i, c in enumerate(chunks[:1]):
        g.rollout.on_message(contract.chunk_topic("device/pump-1", rid, i), c)
    g.rollout.on_message(contract.meta_topic("device/pump-1"), meta)
    g.rollout.on_message(contract.chunk_topic("device/pump-1", rid, 1), b"\0" * 200)  # junk in the middle
    for i, c in enumerate(chunks[1:], start=1):
        g.rollout.on_message(contract.chunk_topic("device/pump-1", rid, i), c)
    g.stream(windows[:60])
    assert g.rollout.state == "serving" and g.offered == ["test-conv-v2"], (g.rollout.state, g.rollout.reason)
    assert g.rollout.status()["ignored"] >= 1


def _other_shape(bundle: Path, key: Ed25519PrivateKey) -> tuple[dict, list[bytes]]:
    """A correctly signed rollout of a model for another input shape (another sensor type's windows)."""
    meta, chunks = contract.make_metadata(bundle, contract.pack_bundle(bundle), "pump-1", key, 8192)
    fields = {k: v for k, v in json.loads(meta).items() if k != "signature"}
    fields["bundle"]["input_shape"] = [1, 16, fields["bundle"]["input_shape"][2]]
    signed = fields | {"signature": base64.b64encode(key.sign(contract.canonical(fields))).decode()}
    return {"rollout_id": fields["rollout_id"], "signed": signed}, chunks


def test_probation_rolls_back_a_model_that_alerts_once_serving(site, windows) -> None:
    current, new = site
    g = Gateway(current, Ed25519PrivateKey.generate())
    old = g.model.bundle.version
    scores = g.model.scorer.score_windows(windows)
    calm, busy = windows[scores <= np.median(scores)], windows[scores > np.median(scores)]
    # fine on the calm windows the shadow sees; above its threshold on most of what follows
    tight = float(np.quantile(g.model.scorer.score_windows(busy), 0.2))
    assert tight > scores[scores <= np.median(scores)].max()
    rewrite_bundle(new, manifest_edit=lambda m: m["threshold"].__setitem__("value", tight))
    g.send(new)
    g.stream(calm[:45])
    assert g.rollout.state == "serving" and g.offered == ["test-conv-v2"]
    g.stream(busy[:40])
    assert g.rollout.state == "rolled_back", g.rollout.status()
    assert "probation" in g.rollout.reason and g.offered == ["test-conv-v2", old]
    assert json.loads((current / "manifest.json").read_text())["model"]["version"] == g.offered[-1]
    memory = json.loads(gw.state_path(current).read_text())
    assert g.rollout.meta.rollout_id in memory["rolled_back"]
