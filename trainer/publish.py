"""``trainer keygen`` and ``trainer publish``: sign a bundle and send it to one sensor, to every sensor of one group
(kind of machine) or to the fleet over MQTT.

The message format is ``edge_agent.contract.rollout``. The private key stays on the workstation: it is
written once with mode 0600 (never over an existing file), and ``publish`` refuses a key file that group or
others may read. Gateways are given the public key (``[rollout] public_keys`` in their config).

Publishing: the chunks first (retained, QoS 1), then the signed metadata (retained, QoS 1), so a gateway
that sees the metadata finds every chunk; then the retained chunks of the rollout it replaces are cleared.
With ``wait_s`` the command then listens to ``vib/+/rollout`` and reports each sensor's state.

Groups: ``--group G`` (``publish(..., to=None, group="G")``) sends to ``vib/rollout/group/G/…``, which only the
sensors whose gateway config says ``group = "G"`` subscribe to. A bundle whose manifest ``model.group`` is set goes
only to that group: to another group or to the fleet it is refused before anything is sent
(``rollout.check_publish_target``); the gateways check it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.contract import rollout
from edge_agent.contract.signing import keygen, load_private_key  # noqa: F401 (trainer keygen; tests import them here)
from edge_agent.mqtt_client import MqttConnection

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ publish
@dataclass
class Published:
    meta: rollout.RolloutMeta
    chunks: int
    bytes: int
    cleared: int  # retained chunks of the previous rollout removed
    states: dict[str, dict] = field(default_factory=dict)  # device -> last rollout state seen for this rollout


def publish(bundle: Path, to: str | None, key_path: Path, connection: MqttConnection, *, group: str | None = None,
            wait_s: float = 0.0, expect: int = 0, chunk_size: int = rollout.CHUNK_SIZE, allow_downgrade: bool = False,
            ack_timeout_s: float = 30.0) -> Published:
    """Sign ``bundle`` and publish it for ``to`` (a device id or ``fleet``) or, with ``to=None``, for every sensor
    of ``group``, on ``connection`` (not started: this function starts and stops it).

    Args:
        group: a group id: only the sensors of that group take it (``trainer publish --group``).
        wait_s: then listen this long for the gateways' rollout states (0: do not wait).
        expect: stop waiting once this many sensors report a final state (serving, rejected, rolled back).
        allow_downgrade: gateways take it even if it is older than the model they serve (a rollback on purpose).

    Raises:
        BundleError: the bundle does not load, or is for another group than the target (nothing is published).
        ConfigError: ``group`` or ``to`` is not an id. ValueError: the key, or both or neither of ``to`` and
        ``group``. RuntimeError: the broker did not take it.
    """
    from edge_agent.contract.bundle import Bundle

    rollout.check_publish_target(None, to, group)  # the target's ids first, then the bundle
    rollout.check_publish_target(Bundle.load(bundle).group, to, group, str(bundle))
    key = load_private_key(key_path)
    payload = rollout.pack_bundle(bundle)
    meta_bytes, chunks = rollout.make_metadata(bundle, payload, to, key, chunk_size, allow_downgrade, group=group)
    meta = rollout.verify_metadata(meta_bytes, rollout.keyring([key.public_key()]))
    target = meta.target
    where = f"{connection.host}:{connection.port}"
    old: list[rollout.RolloutMeta] = []
    states: dict[str, dict] = {}
    got_old = threading.Event()
    final = threading.Event()

    def on_meta(msg) -> None:
        with contextlib.suppress(rollout.RolloutError):  # another key's or a broken rollout: nothing to clear
            old.append(rollout.verify_metadata(msg.payload, rollout.keyring([key.public_key()])))
        got_old.set()

    def on_state(msg) -> None:
        try:
            state = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(state, dict) and state.get("rollout_id") == meta.rollout_id:
            states[msg.topic.split("/")[1]] = state
            if expect and sum(s.get("state") in ("serving", "rejected", "rolled_back") for s in states.values()) \
                    >= expect:
                final.set()

    def confirmed(info, what: str) -> None:
        """Wait for the broker's PUBACK of ``what`` (RuntimeError when it does not come)."""
        try:
            if info is not None:
                info.wait_for_publish(ack_timeout_s)
            ok = info is not None and info.is_published()
        except (RuntimeError, ValueError):  # paho did not queue it (the link went down)
            ok = False
        if not ok:
            raise RuntimeError(f"broker {where} did not acknowledge {what} within {ack_timeout_s:g} s")

    connection.subscribe(rollout.meta_topic(target), 1, on_meta)
    connection.subscribe("vib/+/rollout", 1, on_state)
    connection.start()
    try:
        if not connection.wait_subscribed(ack_timeout_s):
            raise RuntimeError(f"cannot subscribe on {where}: {connection.counters.last_error or 'no answer'}")
        got_old.wait(1.0)  # a retained metadata message arrives right after the SUBACK, if there is one
        for i, chunk in enumerate(chunks):
            confirmed(connection.publish(rollout.chunk_topic(target, meta.rollout_id, i), chunk, qos=1, retain=True),
                      f"chunk {i}")
        confirmed(connection.publish(rollout.meta_topic(target), meta_bytes, qos=1, retain=True), "the metadata")
        cleared = [connection.publish(rollout.chunk_topic(target, prev.rollout_id, i), b"", qos=1, retain=True)
                   for prev in old if prev.rollout_id != meta.rollout_id for i in range(prev.n_chunks)]
        for info in cleared:  # the retained chunks of the replaced rollout are gone before we leave
            confirmed(info, "a cleared chunk")
        log.info("published rollout %s of %s %s to %s: %d chunks, %d bytes", meta.rollout_id[:8], meta.model_id,
                 meta.model_version, target, len(chunks), len(payload))
        if wait_s > 0:
            final.wait(wait_s)
    finally:
        connection.stop()
    return Published(meta, len(chunks), len(payload), len(cleared), dict(states))


# ------------------------------------------------------------------------------------------------ CLI
def commands():
    """The ``trainer keygen`` and ``trainer publish`` click commands."""
    import click

    from edge_agent.contract.errors import BundleError, ConfigError
    from edge_agent.mqtt_client import broker_options, connection_from_options

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
    @click.option("--to", "to", default=None, help="A device id, or 'fleet' for every gateway.")
    @click.option("--group", "group", default=None,
                  help="A group id (the gateways' [[sensors]] group): every sensor of that kind of machine, and no "
                       "other. Not with --to.")
    @click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Private key from `trainer keygen`.")
    @broker_options()
    @click.option("--client-id", default="trainer-publish", show_default=True, help="MQTT client id.")
    @click.option("--wait-s", type=click.FloatRange(0, 86_400), default=0.0, show_default=True,
                  help="Then report the gateways' rollout states for this long.")
    @click.option("--expect", type=click.IntRange(0), default=0, show_default=True,
                  help="Stop waiting once this many sensors report a final state.")
    @click.option("--allow-downgrade", is_flag=True,
                  help="Roll back on purpose: gateways take this bundle even if it is older than the one they serve.")
    def publish_command(bundle: Path, to: str | None, group: str | None, key_path: Path, client_id: str,
                        wait_s: float, expect: int, allow_downgrade: bool, **broker) -> None:
        """Sign BUNDLE and publish it to a device, a group or the fleet (retained, chunked, Ed25519).

        A bundle made for a group (trainer train --group) goes only to that group: --group G."""
        if (to is None) == (group is None):
            raise click.UsageError("give one target: --to DEVICE, --to fleet, or --group GROUP (--to and --group "
                                   "exclude each other)")
        try:
            connection = connection_from_options(client_id, **broker)
            result = publish(bundle, to, key_path, connection, group=group, wait_s=wait_s, expect=expect,
                             allow_downgrade=allow_downgrade)
        except (BundleError, ConfigError, ValueError, OSError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from exc
        m = result.meta
        click.echo(f"rollout {m.rollout_id} -> {m.target}: {m.model_id} {m.model_version}, {result.chunks} chunks, "
                   f"{result.bytes} bytes, sha256 {m.sha256[:16]}…, key {m.key_id}")
        for device, state in sorted(result.states.items()):
            click.echo(f"  {device:24s} {state.get('state', '?'):12s} {state.get('reason') or ''}")
        if expect and sum(s.get("state") == "serving" for s in result.states.values()) < expect:
            raise SystemExit(1)

    return keygen_command, publish_command
