"""``trainer keygen`` and ``trainer publish``: sign a bundle and send it to one sensor or to the fleet over MQTT.

The message format is ``edge_agent.contract.rollout``. The private key stays on the workstation: it is
written once with mode 0600 (never over an existing file), and ``publish`` refuses a key file that group or
others may read. Gateways are given the public key (``[rollout] public_keys`` in their config).

Publishing: the chunks first (retained, QoS 1), then the signed metadata (retained, QoS 1), so a gateway
that sees the metadata finds every chunk; then the retained chunks of the rollout it replaces are cleared.
With ``wait_s`` the command then listens to ``vib/+/rollout`` and reports each sensor's state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_agent.contract import rollout
from edge_agent.contract.signing import keygen, load_private_key  # noqa: F401 (trainer keygen; tests import them here)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ publish
@dataclass
class Published:
    meta: rollout.RolloutMeta
    chunks: int
    bytes: int
    cleared: int  # retained chunks of the previous rollout removed
    states: dict[str, dict] = field(default_factory=dict)  # device -> last rollout state seen for this rollout


def publish(bundle: Path, to: str, key_path: Path, host: str, port: int, *, wait_s: float = 0.0,
            expect: int = 0, chunk_size: int = rollout.CHUNK_SIZE, client_id: str = "",
            username: str | None = None, password: str | None = None, allow_downgrade: bool = False) -> Published:
    """Sign ``bundle`` and publish it for ``to`` (a device id or ``fleet``).

    Args:
        wait_s: then listen this long for the gateways' rollout states (0: do not wait).
        expect: stop waiting once this many sensors report a final state (serving, rejected, rolled back).
        allow_downgrade: gateways take it even if it is older than the model they serve (a rollback on purpose).

    Raises:
        BundleError: the bundle does not load. ValueError: the key. OSError / RuntimeError: the broker.
    """
    key = load_private_key(key_path)
    payload = rollout.pack_bundle(bundle)
    meta_bytes, chunks = rollout.make_metadata(bundle, payload, to, key, chunk_size, allow_downgrade)
    meta = rollout.verify_metadata(meta_bytes, rollout.keyring([key.public_key()]))
    target = meta.target
    old: list[rollout.RolloutMeta] = []
    states: dict[str, dict] = {}
    got_old = threading.Event()
    final = threading.Event()

    def on_message(client, userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == rollout.meta_topic(target):
            with contextlib.suppress(rollout.RolloutError):  # another key's or a broken rollout: nothing to clear
                old.append(rollout.verify_metadata(msg.payload, rollout.keyring([key.public_key()])))
            got_old.set()
            return
        try:
            state = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(state, dict) and state.get("rollout_id") == meta.rollout_id:
            device = msg.topic.split("/")[1]
            states[device] = state
            if expect and sum(s.get("state") in ("serving", "rejected", "rolled_back") for s in states.values()) \
                    >= expect:
                final.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        sub = client.subscribe([(rollout.meta_topic(target), 1), ("vib/+/rollout", 1)])
        if sub[0] != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"cannot subscribe on {host}:{port}")
        got_old.wait(1.0)  # a retained metadata message arrives right after the SUBACK, if there is one
        sent = 0
        for i, chunk in enumerate(chunks):
            info = client.publish(rollout.chunk_topic(target, meta.rollout_id, i), chunk, qos=1, retain=True)
            info.wait_for_publish(30)
            if not info.is_published():
                raise RuntimeError(f"broker {host}:{port} did not acknowledge chunk {i}")
            sent += len(chunk)
        info = client.publish(rollout.meta_topic(target), meta_bytes, qos=1, retain=True)
        info.wait_for_publish(30)
        if not info.is_published():
            raise RuntimeError(f"broker {host}:{port} did not acknowledge the rollout metadata")
        cleared = 0
        for prev in old:
            if prev.rollout_id == meta.rollout_id:
                continue
            for i in range(prev.n_chunks):
                client.publish(rollout.chunk_topic(target, prev.rollout_id, i), b"", qos=1, retain=True)
                cleared += 1
        log.info("published rollout %s of %s %s to %s: %d chunks, %d bytes", meta.rollout_id[:8], meta.model_id,
                 meta.model_version, target, len(chunks), len(payload))
        if wait_s > 0:
            final.wait(wait_s)
        time.sleep(0.05)  # let the last clearing publishes go out
    finally:
        client.disconnect()
        client.loop_stop()
    return Published(meta, len(chunks), len(payload), cleared, dict(states))


# ------------------------------------------------------------------------------------------------ CLI
def commands():
    """The ``trainer keygen`` and ``trainer publish`` click commands."""
    import click

    from edge_agent.contract.errors import BundleError

    @click.command("keygen")
    @click.option("--out", required=True, type=click.Path(path_type=Path),
                  help="Private key file to create (mode 0600); the public key goes to OUT.pub.")
    def keygen_command(out: Path) -> None:
        """Create the Ed25519 key pair that signs model rollouts (the private key never leaves this machine)."""
        try:
            pub, text = keygen(out)
        except FileExistsError as exc:
            raise click.ClickException(f"{out} exists: a signing key is never overwritten") from exc
        click.echo(f"private key: {out} (mode 600; keep it here)\npublic key:  {pub}\n"
                   f"gateway config:\n  [rollout]\n  public_keys = [\"{text}\"]")

    @click.command("publish")
    @click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--to", "to", required=True, help="A device id, or 'fleet' for every gateway.")
    @click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Private key from `trainer keygen`.")
    @click.option("--broker", default="127.0.0.1:1883", show_default=True, help="MQTT broker HOST:PORT.")
    @click.option("--wait-s", type=click.FloatRange(0, 86_400), default=0.0, show_default=True,
                  help="Then report the gateways' rollout states for this long.")
    @click.option("--expect", type=click.IntRange(0), default=0, show_default=True,
                  help="Stop waiting once this many sensors report a final state.")
    @click.option("--allow-downgrade", is_flag=True,
                  help="Roll back on purpose: gateways take this bundle even if it is older than the one they serve.")
    def publish_command(bundle: Path, to: str, key_path: Path, broker: str, wait_s: float, expect: int,
                        allow_downgrade: bool) -> None:
        """Sign BUNDLE and publish it to a device or the fleet (retained, chunked, Ed25519)."""
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise click.BadParameter(f"expected HOST:PORT, got {broker!r}", param_hint="--broker")
        try:
            result = publish(bundle, to, key_path, host, int(port), wait_s=wait_s, expect=expect,
                             allow_downgrade=allow_downgrade)
        except (BundleError, ValueError, OSError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from exc
        m = result.meta
        click.echo(f"rollout {m.rollout_id} -> {m.target}: {m.model_id} {m.model_version}, {result.chunks} chunks, "
                   f"{result.bytes} bytes, sha256 {m.sha256[:16]}…, key {m.key_id}")
        for device, state in sorted(result.states.items()):
            click.echo(f"  {device:24s} {state.get('state', '?'):12s} {state.get('reason') or ''}")
        if expect and sum(s.get("state") == "serving" for s in result.states.values()) < expect:
            raise SystemExit(1)

    return keygen_command, publish_command
