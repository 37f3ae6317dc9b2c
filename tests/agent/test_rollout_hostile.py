"""Rollouts against a hostile broker: replays of older signed rollouts, downgrades, a full disk, missing chunks
(issue 14, breaks 4 and 11 and the missing-chunk caveat). Real bundles, real signatures, a real tmpfs."""

from __future__ import annotations

import json
import shutil
import time
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
from tests.agent.test_rollout_gateway import Gateway
from tests.fs import fill, tmpfs


@pytest.fixture(scope="module")
def windows(agent_bundle: Path) -> np.ndarray:
    spec = load_served_model(agent_bundle).bundle.spec
    x = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=22), RATE * 8)
    return preprocess.windows(preprocess.steps(x, spec), spec.window, spec.hop)


def _versions(agent_bundle: Path, root: Path, *names: str) -> list[Path]:
    """Bundles of one model, created in the order given (model.created one hour apart)."""
    out = []
    for i, name in enumerate(names):
        b = root / name
        shutil.copytree(agent_bundle, b)
        rewrite_bundle(b, version=name, manifest_edit=lambda m, i=i: m["model"].__setitem__(
            "created", f"2026-11-0{1 + i}T10:00:00+00:00"))
        out.append(b)
    return out


def _messages(bundle: Path, key, to: str = "pump-1", **kw) -> list[tuple[str, bytes]]:
    """A rollout's messages (chunks, then metadata) as a broker would deliver them."""
    meta, chunks = contract.make_metadata(bundle, contract.pack_bundle(bundle), to, key, 8192, **kw)
    m = json.loads(meta)
    return [(contract.chunk_topic(m["target"], m["rollout_id"], i), c) for i, c in enumerate(chunks)] + [
        (contract.meta_topic(m["target"]), meta)]


def _deliver(g: Gateway, messages) -> None:
    for topic, payload in messages:
        g.rollout.on_message(topic, payload)
    g.rollout.step()


def test_a_replayed_older_rollout_never_downgrades(agent_bundle, tmp_path, windows) -> None:
    """Break 4: republishing an older, correctly signed rollout installed it (v3 -> v2)."""
    v1, v2, v3 = _versions(agent_bundle, tmp_path / "build", "v1", "v2", "v3")
    site = tmp_path / "bundle"
    shutil.copytree(v1, site)
    g = Gateway(site, Ed25519PrivateKey.generate(), shadow_windows=20, probation_windows=20)
    old_rollout = _messages(v2, g.key)  # captured by an attacker on its way
    _deliver(g, old_rollout)
    g.stream(windows[:30])
    assert g.model.bundle.version == "v2"
    _deliver(g, _messages(v3, g.key))
    g.stream(windows[30:60])
    assert g.model.bundle.version == "v3" and g.rollout.state == "serving"
    _deliver(g, old_rollout)  # the replay
    g.stream(windows[60:80])
    assert g.model.bundle.version == "v3" and g.rollout.counters.stale == 1 and "a replay" in g.rollout.last_ignored
    # and after a restart (the decision is on disk)
    again = Gateway(site, g.key)
    _deliver(again, old_rollout)
    assert again.rollout.state == "idle" and again.rollout.counters.stale == 1 and again.offered == []


def test_an_older_model_needs_the_operators_word(agent_bundle, tmp_path, windows) -> None:
    v1, v2 = _versions(agent_bundle, tmp_path / "build", "v1", "v2")
    site = tmp_path / "bundle"
    shutil.copytree(v2, site)
    g = Gateway(site, Ed25519PrivateKey.generate(), shadow_windows=20, probation_windows=20)
    _deliver(g, _messages(v1, g.key))  # a new rollout (published now) of an older model
    assert g.rollout.state == "rejected" and "a downgrade" in g.rollout.reason and "--allow-downgrade" in \
        g.rollout.reason
    _deliver(g, _messages(v1, g.key, allow_downgrade=True))  # trainer publish --allow-downgrade
    g.stream(windows[:30])
    assert g.rollout.state == "serving" and g.model.bundle.version == "v1"


def test_a_rollout_that_hits_a_full_disk_waits_cleans_up_and_is_retried(agent_bundle, tmp_path, windows,
                                                                         monkeypatch) -> None:
    """Break 11: a rollout rejected for a full disk left its staging folder and was never retried."""
    monkeypatch.setattr(gw, "RETRY_MIN_S", 0.2)
    v1, v2 = _versions(agent_bundle, tmp_path / "build", "v1", "v2")
    size_kb = 4 * sum(f.stat().st_size for f in v1.rglob("*") if f.is_file()) // 1024 + 64
    with tmpfs(tmp_path / "disk", f"{size_kb}k") as disk:
        site = disk / "bundle"
        shutil.copytree(v1, site)
        g = Gateway(site, Ed25519PrivateKey.generate(), shadow_windows=20, probation_windows=20)
        filler = fill(disk)
        _deliver(g, _messages(v2, g.key))
        assert g.rollout.state == "waiting" and "No space left" in g.rollout.reason, (g.rollout.state, g.rollout.reason)
        assert not [p for p in disk.iterdir() if ".rollout-" in p.name], "the staging folder is cleaned"
        time.sleep(0.3)
        g.stream(windows[:5])  # tried again: still full
        assert g.rollout.state == "waiting" and g.rollout.counters.retries >= 1
        filler.unlink()  # space comes back
        deadline = time.monotonic() + 10
        while g.rollout.state != "serving" and time.monotonic() < deadline:
            g.stream(windows[:25])
            time.sleep(0.1)
        assert g.rollout.state == "serving" and g.model.bundle.version == "v2", g.rollout.reason
        assert g.rollout.counters.rejected == 0


def test_a_missing_chunk_times_out_as_configured_and_the_rollout_is_tried_again(agent_bundle, tmp_path,
                                                                                windows) -> None:
    v1, v2 = _versions(agent_bundle, tmp_path / "build", "v1", "v2")
    site = tmp_path / "bundle"
    shutil.copytree(v1, site)
    g = Gateway(site, Ed25519PrivateKey.generate(), shadow_windows=20, probation_windows=20, chunk_timeout_s=0.5)
    messages = _messages(v2, g.key)
    _deliver(g, messages[1:])  # chunk 0 lost
    assert g.rollout.state == "received"
    time.sleep(0.6)
    g.rollout.step()
    assert g.rollout.state == "rejected" and "1 of" not in g.rollout.reason and "0.5 s" in g.rollout.reason
    # the broker delivers the retained rollout again (a reconnect): now complete, it goes through
    fresh = Gateway(site, g.key, shadow_windows=20, probation_windows=20)
    _deliver(fresh, messages)
    fresh.stream(windows[:30])
    assert fresh.rollout.state == "serving" and fresh.model.bundle.version == "v2"
