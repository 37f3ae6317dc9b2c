"""The brokers' access control for one gateway, generated from its config (``edge-agent broker-acl``).

Who may publish and subscribe where is the first trust boundary (docs: the threat model); mosquitto enforces it
with ``password_file`` (no anonymous clients) and ``acl_file``. The ACLs name every topic of every sensor, so a
client can only act for the devices it owns:

* ``local``, the broker on the gateway: the agent (``[mqtt] username``, default ``edge-agent``) reads its sensors'
  samples, receipts, rollouts (``vib/rollout/fleet/#``, ``vib/rollout/device/<device>/#`` and, once per distinct
  ``group`` of its sensors, ``vib/rollout/group/<group>/#``) and the bridge's state, and writes its sensors' alert,
  health, notice, status, upload and rollout-state topics and the gateway's status; sensor nodes (``sensor``) may
  only write their samples; the bridge's local side (``bridge``: ``local_username`` in the bridge config) reads
  what crosses to the centre and writes what comes back (rollouts, receipts); dashboards (``dashboard``) only read.
  With ``[answers] mqtt = true``, technicians answer alerts on ``vib/<device>/answer/set`` of this gateway's devices
  only: the agent reads it and writes the retained ``vib/<device>/answer``; dashboards (Home Assistant's answer
  buttons) and the bridge (answers from the centre) may write it; nobody else.
* ``central``, this gateway's lines of the central broker's ACL: its bridge logs in as the gateway id
  (``remote_username``) and may write only its own devices' topics, and read only its own devices' receipts and
  rollouts (the fleet's, its devices' and its sensors' groups': a gateway without a ``pump`` sensor never receives
  ``vib/rollout/group/pump/...``); with ``[answers] mqtt``, it reads its own devices' answer commands and writes
  their answer state.
  ``CENTRAL_SERVICES`` holds the lines of the collectors, the publisher and the operators (central dashboards that
  may answer any device's alert), once per central broker. Another gateway's login can never answer for a device
  it does not own: no line lets it write ``vib/<device>/answer/set``.

mosquitto 2.0 grants a wildcard subscription and filters each delivery by the reader's ACL: a bridge subscribed
to ``vib/+/upload/receipt`` receives only its own devices' receipts.
"""

from __future__ import annotations

from edge_agent.config import AgentConfig, MqttSection
from edge_agent.contract import rollout, topics

#: Users of the local broker besides the agent.
SENSOR_USER, BRIDGE_USER, DASHBOARD_USER = "sensor", "bridge", "dashboard"
#: The device topics the agent writes, and the bridge forwards to the centre.
OUT_LEAVES = ("alert", "health", "notice", "status", "upload", "rollout")
#: The lines of the central broker's ACL that are not per gateway.
CENTRAL_SERVICES = """\
# trainer collect (every collector logs in as "collector"): reads the uploads, writes the signed receipts
user collector
topic read vib/+/upload
topic write vib/+/upload/receipt
# trainer publish (the workstation): writes the signed rollouts, reads the gateways' rollout states
user publisher
topic readwrite vib/rollout/#
topic read vib/+/rollout
# operators (a central dashboard): read the alerts, states and answers, answer alerts (gateways with [answers] mqtt)
user operator
topic read vib/+/alert
topic read vib/+/health
topic read vib/+/status
topic read vib/+/answer
topic read vib/gateway/#
topic write vib/+/answer/set
"""


def _samples_topics(cfg: AgentConfig) -> list[str]:
    return [(s.source.mqtt or MqttSection()).samples_topic(s.device) for s in cfg.sensors if s.source.kind == "mqtt"]


def _group_rollout_filters(cfg: AgentConfig) -> list[str]:
    """``vib/rollout/group/<group>/#`` once per distinct group of the gateway's sensors, in config order: the filter
    the agent subscribes to for each group (the last of :func:`rollout.subscriptions`)."""
    first: dict[str, str] = {}  # group -> its first sensor
    for s in cfg.sensors:
        if s.group is not None:
            first.setdefault(s.group, s.device)
    return [rollout.subscriptions(d, g)[-1] for g, d in first.items()]


def local(cfg: AgentConfig) -> str:
    """The gateway broker's ACL (mosquitto ``acl_file`` syntax)."""
    devices = [s.device for s in cfg.sensors]
    gw = cfg.gateway
    agent = (cfg.mqtt.username if cfg.mqtt and cfg.mqtt.username else None) or "edge-agent"
    lines = [f"# the broker on gateway {gw} (`edge-agent broker-acl --side local`); mosquitto.conf: allow_anonymous "
             f"false, password_file, acl_file", "", "# the agent ([mqtt] username)", f"user {agent}"]
    lines += [f"topic read {t}" for t in _samples_topics(cfg)]
    answers = cfg.answers_mqtt
    for d in devices:
        lines += [f"topic write {topics.device_topic(d, leaf)}" for leaf in OUT_LEAVES]
        lines += [f"topic read {topics.receipt_topic(d)}", f"topic read vib/rollout/{rollout.target_of(d)}/#"]
        if answers:
            lines += [f"topic read {topics.answer_command_topic(d)}", f"topic write {topics.answer_topic(d)}"]
    lines += [f"topic read {t}" for t in _group_rollout_filters(cfg)]
    lines += [f"topic read vib/rollout/{rollout.FLEET}/#", f"topic write {topics.gateway_topic(gw, 'status')}",
              f"topic write {topics.gateway_topic(gw, 'availability')}",
              f"topic read {cfg.uploads.uplink_topic or topics.bridge_topic(gw)}"]
    if cfg.homeassistant.enabled:
        lines.append(f"topic readwrite {cfg.homeassistant.discovery_prefix}/+/{gw}/+/config")
    lines += ["", "# sensor nodes: their samples, nothing else", f"user {SENSOR_USER}"]
    lines += [f"topic write {t}" for t in _samples_topics(cfg)]
    lines += ["", "# the bridge's local side (local_username): out to the centre, and back", f"user {BRIDGE_USER}"]
    for d in devices:
        lines += [f"topic read {topics.device_topic(d, leaf)}" for leaf in OUT_LEAVES]
        lines.append(f"topic write {topics.receipt_topic(d)}")
        if answers:
            lines += [f"topic read {topics.answer_topic(d)}", f"topic write {topics.answer_command_topic(d)}"]
    lines += [f"topic read vib/gateway/{gw}/#", "topic write vib/rollout/#", "",
              "# dashboards (Home Assistant, Node-RED): read only" + (", and answer this gateway's alerts" if answers
                                                                     else ""),
              f"user {DASHBOARD_USER}", "topic read vib/#"]
    if answers:
        lines += [f"topic write {topics.answer_command_topic(d)}" for d in devices]
    if cfg.homeassistant.enabled:
        lines.append(f"topic read {cfg.homeassistant.discovery_prefix}/#")
    return "\n".join(lines) + "\n"


def central(cfg: AgentConfig, services: bool = False) -> str:
    """This gateway's lines of the central broker's ACL (its bridge's ``remote_username`` is the gateway id);
    with ``services``, the collectors' and the publisher's lines too."""
    gw = cfg.gateway
    lines = [f"# gateway {gw}: its bridge logs in as {gw!r} (`edge-agent broker-acl --side central`)", f"user {gw}"]
    for s in cfg.sensors:
        d = s.device
        lines += [f"topic write {topics.device_topic(d, leaf)}" for leaf in OUT_LEAVES]
        lines += [f"topic read {topics.receipt_topic(d)}", f"topic read vib/rollout/{rollout.target_of(d)}/#"]
        if cfg.answers_mqtt:
            lines += [f"topic read {topics.answer_command_topic(d)}", f"topic write {topics.answer_topic(d)}"]
    lines += [f"topic read {t}" for t in _group_rollout_filters(cfg)]
    lines += [f"topic read vib/rollout/{rollout.FLEET}/#", f"topic write vib/gateway/{gw}/#",
              f"topic write {topics.bridge_topic(gw)}"]
    return ("\n".join(lines) + "\n") + (("\n" + CENTRAL_SERVICES) if services else "")
