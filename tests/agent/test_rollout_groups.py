"""One model per kind of machine (issue 18, item 3): the ``group/<G>`` rollout target, the rule that a sensor never
takes another group's model (signed metadata first, the unpacked manifest again), `trainer publish --group` and its
refusals, and `edge-agent deploy --config` of another group's bundle. Real bundles, real signatures, real mosquitto."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import rollout as gw
from edge_agent.bundle_watch import load_served_model
from edge_agent.cli import main as edge_agent_main
from edge_agent.contract import preprocess
from edge_agent.contract import rollout as contract
from edge_agent.contract.errors import BundleError, ConfigError
from firmware_sim import signals
from firmware_sim.broker import Broker
from tests.agent.pipeline_helpers import RATE, _toml
from tests.agent.rollout_group_helpers import as_schema_2, grouped, resigned, retained
from trainer.cli import cli as trainer_main
from trainer.publish import keygen, load_private_key


class GroupSensor:
    """What a sensor of ``group`` gives its SensorRollout: the served model, a swap, a retained-state publisher."""

    def __init__(self, device: str, group: str | None, bundle: Path, key: Ed25519PrivateKey) -> None:
        self.model = load_served_model(bundle)
        self.offered: list[str] = []
        self.states: list[dict] = []
        policy = gw.RolloutPolicy((contract.public_key_text(key.public_key()),), shadow_windows=30,
                                  probation_windows=40, min_probation_windows=20)
        self.rollout = gw.SensorRollout(device, bundle, policy, serving=lambda: self.model, offer_model=self.offer,
                                        publish=lambda topic, payload: self.states.append(json.loads(payload)),
                                        group=group)

    def offer(self, model) -> None:
        self.model = model
        self.offered.append(model.bundle.version)

    def deliver(self, meta: bytes, chunks: list[bytes]) -> None:
        target, rid = json.loads(meta)["target"], json.loads(meta)["rollout_id"]
        for i, c in enumerate(chunks):
            self.rollout.on_message(contract.chunk_topic(target, rid, i), c)
        self.rollout.on_message(contract.meta_topic(target), meta)

    def stream(self, windows: np.ndarray) -> None:
        for w in windows:
            self.rollout.observe(w, self.model.scorer.score(w), self.model.bundle.threshold.value,
                                 self.model.bundle.version)
            self.rollout.step()


@pytest.fixture(scope="module")
def windows(agent_bundle: Path) -> np.ndarray:
    spec = load_served_model(agent_bundle).bundle.spec
    x = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=21), RATE * 8)
    return preprocess.windows(preprocess.steps(x, spec), spec.window, spec.hop)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def served(agent_bundle: Path, dest: Path) -> Path:
    shutil.copytree(agent_bundle, dest)
    return dest


# ---------------------------------------------------------------------------------------------- the contract
def test_group_targets_topics_and_bad_group_ids() -> None:
    assert contract.group_target("pump") == "group/pump"
    assert contract.subscriptions("pump-1") == ["vib/rollout/fleet/#", "vib/rollout/device/pump-1/#"]
    assert contract.subscriptions("pump-1", "pump")[2] == "vib/rollout/group/pump/#"
    rid = "ab" * 16
    assert contract.parse_topic(f"vib/rollout/group/pump/{rid}/chunk/3") == ("group/pump", rid, 3)
    assert contract.parse_topic("vib/rollout/group/pump/meta") == ("group/pump", None, None)
    assert contract.parse_topic("vib/rollout/group/meta") is None
    for bad in ("a/b", "a+b", "#", ""):
        with pytest.raises(ConfigError, match=rf"invalid group id {bad!r}|group id"):
            contract.group_target(bad)
        with pytest.raises(ConfigError, match="group id"):
            contract.subscriptions("pump-1", bad)


def test_the_signed_metadata_carries_the_bundles_group_and_older_schemas_still_read(agent_bundle, tmp_path, key):
    keys = contract.keyring([key.public_key()])
    pump = grouped(agent_bundle, tmp_path / "pump", "pump-v2", "pump")
    meta, _ = contract.make_metadata(pump, contract.pack_bundle(pump), None, key, 8192, group="pump")
    m = contract.verify_metadata(meta, keys)
    assert (m.schema, m.target, m.group, m.group_signed) == (3, "group/pump", "pump", True)
    plain, _ = contract.make_metadata(agent_bundle, contract.pack_bundle(agent_bundle), "fleet", key, 8192)
    assert contract.verify_metadata(plain, keys).group is None
    old = contract.verify_metadata(resigned(meta, key, as_schema_2), keys)
    assert (old.schema, old.group, old.group_signed) == (2, None, False)
    with pytest.raises(contract.RolloutError, match="malformed"):  # schema 3 must say it (null when none)
        contract.verify_metadata(resigned(meta, key, lambda f: f["bundle"].pop("group")), keys)
    with pytest.raises(contract.RolloutError, match="not a group id"):
        contract.verify_metadata(resigned(meta, key, lambda f: f["bundle"].__setitem__("group", "a/#")), keys)
    for schema in (True, 3.0, "3"):  # true == 1 and 3.0 == 3 in Python: a schema is an int, nothing else
        with pytest.raises(contract.RolloutError, match="not supported"):
            contract.verify_metadata(resigned(meta, key, lambda f, s=schema: f.__setitem__("schema", s)), keys)
    with pytest.raises(ValueError, match="one of them"):
        contract.make_metadata(pump, b"x", "fleet", key, group="pump")


def test_the_publishers_check_of_a_grouped_bundle() -> None:
    contract.check_publish_target("pump", None, "pump")
    contract.check_publish_target(None, None, "fan")  # a fleet-wide model, sent to one group only
    contract.check_publish_target(None, "fleet", None)
    contract.check_publish_target("pump", "pump-1", None)  # one device: its gateway checks its group
    with pytest.raises(BundleError, match=r"for group 'pump' \(manifest model.group\), not 'fan': publish it with "
                                          r"--group pump"):
        contract.check_publish_target("pump", None, "fan", "b")
    with pytest.raises(BundleError, match="publish it with --group pump instead of --to fleet"):
        contract.check_publish_target("pump", "fleet", None, "b")
    with pytest.raises(ConfigError, match="invalid group id 'a/b'"):
        contract.check_publish_target(None, None, "a/b")
    with pytest.raises(ValueError, match="not both"):
        contract.check_publish_target(None, "fleet", "pump")


# ---------------------------------------------------------------------------------------------- the gateway's rule
def test_a_pump_model_on_the_group_target_serves_the_pump_sensor(agent_bundle, tmp_path, windows, key) -> None:
    pump = GroupSensor("pump-1", "pump", served(agent_bundle, tmp_path / "p" / "bundle"), key)
    assert "group/pump" in pump.rollout.targets
    new = grouped(agent_bundle, tmp_path / "pump-v2", "pump-v2", "pump")
    pump.deliver(*contract.make_metadata(new, contract.pack_bundle(new), None, key, 8192, group="pump"))
    pump.stream(windows[:35])
    assert pump.rollout.state == "serving" and pump.offered == ["pump-v2"], pump.rollout.reason
    # a sensor of another group ignores the group's topic altogether (its gateway does not subscribe to it either)
    fan = GroupSensor("fan-1", "fan", served(agent_bundle, tmp_path / "f" / "bundle"), key)
    fan.deliver(*contract.make_metadata(new, contract.pack_bundle(new), None, key, 8192, group="pump"))
    fan.rollout.step()
    assert fan.rollout.state == "idle" and fan.rollout.counters.rejected == 0 and fan.offered == []


def test_a_fleet_wide_model_serves_a_sensor_of_any_group(agent_bundle, tmp_path, windows, key) -> None:
    fan = GroupSensor("fan-1", "fan", served(agent_bundle, tmp_path / "f" / "bundle"), key)
    new = grouped(agent_bundle, tmp_path / "v2", "any-v2", None)
    fan.deliver(*contract.make_metadata(new, contract.pack_bundle(new), "fleet", key, 8192))
    fan.stream(windows[:35])
    assert fan.rollout.state == "serving" and fan.offered == ["any-v2"], fan.rollout.reason


@pytest.mark.parametrize("how", ["fleet", "device", "fleet, schema 2", "no group"])
def test_a_sensor_never_takes_another_groups_model(agent_bundle, tmp_path, windows, key, how) -> None:
    """A pump model that reached the fan sensor anyway (a publisher that skipped the check, signed with the trusted
    key): refused with a reason a technician can act on, counted, the old model keeps serving."""
    sensor_group = None if how == "no group" else "fan"
    bundle = served(agent_bundle, tmp_path / "f" / "bundle")
    fan = GroupSensor("fan-1", sensor_group, bundle, key)
    old = fan.model.bundle.version
    new = grouped(agent_bundle, tmp_path / "pump-v2", "pump-v2", "pump")
    meta, chunks = contract.make_metadata(new, contract.pack_bundle(new), "fan-1" if how == "device" else "fleet",
                                          key, 8192)
    if how == "fleet, schema 2":  # the metadata does not say the group: the unpacked manifest does
        meta = resigned(meta, key, as_schema_2)
    fan.deliver(meta, chunks)
    fan.stream(windows[:35])
    r = fan.rollout
    assert r.state == "rejected" and r.counters.rejected == 1, (r.state, r.reason)
    mine = "no group" if sensor_group is None else "group 'fan'"
    assert f"sensor fan-1 ({mine}) does not take model test-conv pump-v2 of group 'pump'" in r.reason
    assert "`trainer publish --group pump`" in r.reason and 'set group = "pump"' in r.reason
    states = [s["state"] for s in fan.states]
    # before any chunk is used when the metadata says the group; after unpacking when only the manifest does
    assert states == (["received", "rejected"] if how == "fleet, schema 2" else ["rejected"]), states
    assert fan.states[-1]["reason"] == r.reason and fan.states[-1]["rejected"] == 1
    assert fan.offered == [] and fan.model.bundle.version == old
    assert json.loads((bundle / "manifest.json").read_text())["model"]["version"] == old
    assert not gw.previous_path(bundle).exists() and not list(bundle.parent.glob(".bundle.rollout-*"))
    assert r.meta.rollout_id in json.loads(gw.state_path(bundle).read_text())["rejected"], "remembered"


def test_metadata_that_names_another_group_than_the_manifest_is_refused(agent_bundle, tmp_path, windows, key):
    """Signed metadata saying 'fan' around a bundle whose manifest says 'pump': the bundle is not the one named."""
    fan = GroupSensor("fan-1", "fan", served(agent_bundle, tmp_path / "f" / "bundle"), key)
    new = grouped(agent_bundle, tmp_path / "pump-v2", "pump-v2", "pump")
    meta, chunks = contract.make_metadata(new, contract.pack_bundle(new), None, key, 8192, group="fan")
    fan.deliver(resigned(meta, key, lambda f: f["bundle"].__setitem__("group", "fan")), chunks)
    fan.stream(windows[:35])
    assert fan.rollout.state == "rejected" and "not the one its metadata names" in fan.rollout.reason
    assert fan.offered == []


# ---------------------------------------------------------------------------------------------- trainer publish
@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "rollout.key"
    keygen(path)
    return path


def test_trainer_publish_group_sends_to_the_group_and_refuses_what_does_not_fit(agent_bundle, tmp_path, signing_key,
                                                                              mosquitto: Broker) -> None:
    pump = grouped(agent_bundle, tmp_path / "pump-v2", "pump-v2", "pump")
    broker = ["--key", str(signing_key), "--broker", f"{mosquitto.host}:{mosquitto.port}"]
    run = CliRunner().invoke
    for bad in ("a/b", "a+b", "#"):
        out = run(trainer_main, ["publish", str(pump), "--group", bad, *broker])
        assert out.exit_code != 0 and f"invalid group id {bad!r}" in out.output, out.output
    out = run(trainer_main, ["publish", str(pump), "--group", "fan", *broker])
    assert out.exit_code != 0 and "for group 'pump' (manifest model.group), not 'fan'" in out.output, out.output
    assert "publish it with --group pump" in out.output and "nothing was published" in out.output
    out = run(trainer_main, ["publish", str(pump), "--to", "fleet", *broker])
    assert out.exit_code != 0 and "publish it with --group pump instead of --to fleet" in out.output, out.output
    out = run(trainer_main, ["publish", str(pump), "--to", "fleet", "--group", "pump", *broker])
    assert out.exit_code == 2 and "--to and --group exclude each other" in out.output, out.output
    assert retained(mosquitto) == {}, "nothing was published"

    out = run(trainer_main, ["publish", str(pump), "--group", "pump", *broker])
    assert out.exit_code == 0 and "-> group/pump" in out.output, out.output
    got = retained(mosquitto)
    meta = contract.verify_metadata(got.pop("vib/rollout/group/pump/meta"),
                                    contract.keyring([load_private_key(signing_key).public_key()]))
    assert (meta.target, meta.group, meta.model_version) == ("group/pump", "pump", "pump-v2")
    assert got and all(t.startswith(f"vib/rollout/group/pump/{meta.rollout_id}/chunk/") for t in got)


# ---------------------------------------------------------------------------------------------- edge-agent deploy
def test_deploy_refuses_a_bundle_of_another_group_for_the_sensor(agent_bundle, tmp_path) -> None:
    fan_path = served(agent_bundle, tmp_path / "fan-bundle")
    pump = grouped(agent_bundle, tmp_path / "pump-v2", "pump-v2", "pump")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(_toml({"gateway": "hall-3", "status": {"file": str(tmp_path / "status.json"), "mqtt": False}})
                   + f'\n[[sensors]]\ndevice = "fan-1"\ngroup = "fan"\n[sensors.source]\nkind = "serial"\n'
                     f'[sensors.source.serial]\nport = "/dev/null-test"\n[sensors.bundle]\npath = "{fan_path}"\n'
                     f'\n[[sensors]]\ndevice = "pump-1"\ngroup = "pump"\n[sensors.source]\nkind = "serial"\n'
                     f'[sensors.source.serial]\nport = "/dev/null-test2"\n[sensors.bundle]\n'
                     f'path = "{tmp_path / "pump-bundle"}"\n')
    out = CliRunner().invoke(edge_agent_main, ["deploy", str(pump), "--config", str(cfg), "--sensor", "fan-1"])
    assert out.exit_code != 0, out.output
    assert "sensor fan-1 (group 'fan') does not take model test-conv pump-v2 of group 'pump'" in out.output
    assert 'set group = "pump"' in out.output
    assert json.loads((fan_path / "manifest.json").read_text())["model"]["version"] != "pump-v2"
    out = CliRunner().invoke(edge_agent_main, ["deploy", str(pump), "--config", str(cfg), "--sensor", "pump-1"])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "pump-bundle" / "manifest.json").read_text())["model"]["version"] == "pump-v2"
