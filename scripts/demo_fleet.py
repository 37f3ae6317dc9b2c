"""The fleet loop on one machine: two gateways, two kinds of machine, alerts, uploads, collection, one model per
kind of machine retrained on Ray and proving itself, signed rollouts per kind, and the sensors reporting them.

1. a first model per kind of machine (``trainer train --group``), each trained on a bench recording of a healthy
   bearing (firmware_sim) on a test stand whose worn drive adds harder random impacts than the plant's machines:
   ``pump`` (IMS-like: 20 kHz x 4 channels, roughness 0.15 g against the pumps' 0.12) and ``fan`` (FEMTO-like:
   25.6 kHz x 2 channels, 0.6 g against the fans' 0.4), features mode. Each served model learned those impacts as
   normal, so in the field it sits at about half its threshold and a bearing fault (an impact train) must grow
   before it alerts;
2. three mosquittos: the central broker and one per gateway, bridged to it (examples/mosquitto-bridge.conf);
   two `trainer collect` processes share one MQTT 5 subscription into a Parquet dataset;
3. two gateways (`edge-agent run`) score simulated bearings streamed over their local broker: gw-a has a pump
   (pump-a, healthy) and a fan (fan-a, healthy), gw-b a pump (pump-b) that develops an outer-race fault over
   ``--collect-s`` + 25 s (firmware_sim's profile: healthy to 60 % of that life, incipient to 85 %). Each sensor says
   its kind of machine (``[[sensors]] group``); they keep reservoir samples of normal windows and the windows around
   each alert, and upload them with their group (spool -> local broker -> bridge -> collectors); streaming goes on
   until pump-b's alert has escalated to critical and its windows are collected: a fault both models see clearly;
4. `trainer retrain --by group` trains one candidate per group on that group's collected healthy windows (Ray
   tasks on a local Ray; serially with a notice when Ray is not installed), leaving out pump-b's windows from 20 s
   before its alert (``--alert-margin-s``: the incipient fault; a day in the field), and gates each against the
   model its group serves on held-out normal and alert windows: it has learned the plant's quieter normal and sees
   pump-b's fault with a wider margin. When the gate refuses a group (``--bad-data`` shows one: the pumps), the demo
   shows its table and reason, that group's old model keeps serving, and only the accepted groups are published;
5. `trainer publish --group` signs each accepted model (Ed25519) and sends it to its group only; each sensor of
   that group verifies it, shadow-scores it beside its model, swaps it in, and reports its rollout state; the
   sensors of the other group never see it;
6. a summary: what each sensor saw, kept and serves, what the dataset holds by group, the verdicts, the rollouts.

Run with ``make demo-fleet``; everything lands in ``runs/demo-fleet/``. About three minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware_sim.broker import Broker  # noqa: E402

#: The kinds of machine: firmware_sim's preset, its sample rate, and the bench recording's rougher drive.
GROUPS = {"pump": ("ims", 20_000, "roughness_g=0.15"), "fan": ("femto", 25_600, "roughness_g=0.6")}
#: The sensors: device -> (gateway, group, bearing state, seed).
SENSORS = {"pump-a": ("gw-a", "pump", "healthy", 7), "fan-a": ("gw-a", "fan", "healthy", 9),
           "pump-b": ("gw-b", "pump", "degrading", 8)}
GATEWAYS = sorted({gw for gw, *_ in SENSORS.values()})
FEATURES = "rms,peak,kurtosis,crest"
ALERT_MARGIN_S = 20  # pump-b's life is 70 s, its incipient stage from 42 s; the alert comes at about 50 s
LOG_TAIL = 60  # lines of a failed step's log shown (a whole comparison table and what follows it)


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(cmd: list, log: Path | None = None, *, outcome=None, **kwargs) -> subprocess.CompletedProcess:
    """Run a step; its log goes to ``log`` (its tail shown when it fails). ``outcome(done)`` True: a non-zero exit
    that is an outcome (a refusal by the retrain gate), returned, not a failure."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    if log is None:
        return subprocess.run([str(c) for c in cmd], check=True, env=env, **kwargs)
    with open(log, "w") as f:
        done = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=f, text=True, env=env, **kwargs)
    if done.returncode != 0 and not (outcome and outcome(done)):
        print(done.stdout + "\n".join(log.read_text().splitlines()[-LOG_TAIL:]))
        raise SystemExit(f"{cmd[1]} {cmd[2]} failed with exit code {done.returncode} (log: {log})")
    return done


def retrain_outcomes(out: Path) -> dict[str, dict]:
    """{group: {status, reason, ...}} from ``trainer retrain --by group``'s summary (``out/retrain.json``)."""
    try:
        return json.loads((out / "retrain.json").read_text())["groups"]
    except (OSError, ValueError, KeyError):
        return {}


def bridge_conf(gateway: str, central: Broker) -> str:
    text = (REPO / "examples" / "mosquitto-bridge.conf").read_text()
    keep = [ln for ln in text.splitlines()
            if not re.match(r"\s*(listener|persistence|persistence_location|autosave_interval|allow_anonymous|"
                            r"password_file|acl_file|local_username|local_password|remote_username|remote_password)\b",
                            ln)]  # the demo's brokers are anonymous on loopback; the tests run the example's ACLs
    conf = re.sub(r"(?m)^address .*$", f"address {central.host}:{central.port}", "\n".join(keep))
    conf = re.sub(r"(?m)^restart_timeout .*$", "restart_timeout 1 5", conf)
    return "allow_anonymous true\n" + conf.replace("GATEWAY-ID", gateway) + "\n"


def agent_config(work: Path, gateway: str, port: int, public_key: str, collector_key: str,
                 calibrate: dict[str, int]) -> Path:
    path = work / gateway / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"""gateway = "{gateway}"

[mqtt]
host = "127.0.0.1"
port = {port}

[uploads]
spool_path = "spool.sqlite"
uplink_topic = "vib/gateway/bridge/{gateway}"   # the bridge's notification: hold uploads while the uplink is down
enabled = true
every_s = 1.0              # one reservoir-sampled normal window per second (a demo; 600 s in the field)
context_before = 5
context_after = 5
receipt_keys = ["{collector_key}"]  # the collectors sign their receipts (a receipt deletes a record from the spool)

[rollout]
public_keys = ["{public_key}"]
shadow_windows = 50
probation_windows = 100

[status]
every_s = 1.0
file = "status.json"

[http]
enabled = false
"""
    for device, (gw, group, _state, _seed) in SENSORS.items():
        if gw != gateway:
            continue
        text += f"""
[[sensors]]
device = "{device}"
group = "{group}"          # its kind of machine: its uploads carry it, it takes only its group's models
[sensors.source]
kind = "mqtt"
sample_rate = {GROUPS[group][1]}
[sensors.bundle]
path = "bundles/{device}"
watch_s = 1.0
[sensors.alerts]
cooldown_s = 5.0
[sensors.alerts.sinks]
jsonl = "alerts-{device}.jsonl"
""" + (f"[sensors.calibration]\nwindows = {calibrate[device]}\n" if calibrate.get(device) else "")
    path.write_text(text)
    return path


def status(work: Path, gateway: str) -> dict:
    try:
        return json.loads((work / gateway / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def sensor_status(work: Path, device: str) -> dict:
    return status(work, SENSORS[device][0]).get("sensors", {}).get(device, {})


def wait(what: str, predicate, timeout: float, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{what}: {p.args[0]} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def dataset_counts(root: Path, by: str = "device") -> dict:
    """{device (or group): {kind: windows}} of the collected dataset."""
    from trainer import dataset

    if not root.exists():
        return {}
    table = dataset.read_table(root, columns=[by, "kind"])
    out: dict = {}
    for key, kind in zip(table.column(by).to_pylist(), table.column("kind").to_pylist(), strict=True):
        out.setdefault(key, {}).setdefault(kind, 0)
        out[key][kind] += 1
    return out


def per_collector(root: Path) -> dict[str, int]:
    """Windows each collector wrote (its id is in its files' names)."""
    import pyarrow.parquet as pq

    out: dict[str, int] = {}
    for f in root.rglob("part-*.parquet"):
        member = "member " + f.name.split("-")[-3]  # part-collect-<group>-<host>-<member>-<n>-<rand>.parquet
        out[member] = out.get(member, 0) + pq.read_metadata(f).num_rows
    return out


def version(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["model"]["version"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "runs" / "demo-fleet")
    ap.add_argument("--collect-s", type=float, default=45.0, help="seconds of streaming before retraining (at least; "
                    "then until pump-b's alert is critical); pump-b's bearing fails after this + 25 s")
    ap.add_argument("--bad-data", action="store_true", help="pump-a is already damaged and its gateway calibrates its "
                    "threshold on it, so the pumps' 'healthy' uploads hold the fault: the retrain gate refuses the "
                    "pumps' new model (the fans' goes out)")
    ap.add_argument("--serial", action="store_true", help="retrain the groups one after the other, without Ray")
    args = ap.parse_args()
    states = {d: ("broken" if args.bad_data and d == "pump-a" else st) for d, (_, _, st, _) in SENSORS.items()}
    calibrate = {"pump-a": 100} if args.bad_data else {}
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t_start = time.monotonic()
    procs: list[subprocess.Popen] = []
    brokers: list[Broker] = []
    logs = work / "logs"
    logs.mkdir()
    current_dir = work / "bundles" / "current"  # one bundle per group: current/<group>/

    def spawn(name: str, cmd: list) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process at the end)
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, cwd=work)
        procs.append(p)
        return p

    try:
        step("1. a first model per kind of machine, each trained on a bench recording of a healthy bearing "
             "(a rougher test stand)")
        current = {}
        for group, (preset, rate, rougher) in GROUPS.items():
            run([BIN / "firmware-sim", "generate", "--signal", "bearing", "--preset", preset, "--state", "healthy",
                 "--override", rougher, "--samples", str(rate * 10), "--seed", "1", "--out",
                 work / f"bench-{group}.npy"])
            run([BIN / "trainer", "train", "--data", work / f"bench-{group}.npy", "--format", "npy", "--mode",
                 "features", "--block", "1024", "--window", "8", "--hop", "2", "--features", FEATURES, "--model",
                 "conv1d", "--units", "16,8", "--epochs", "30", "--patience", "5", "--batch-size", "16", "--model-id",
                 f"{group}-conv", "--group", group, "--out", current_dir / group], log=logs / f"train-{group}.log")
            current[group] = version(current_dir / group)
            print(f"group {group}: {current[group]}")
        run([BIN / "trainer", "keygen", "--out", work / "keys" / "rollout.key"], log=logs / "keygen.log")
        public_key = (work / "keys" / "rollout.key.pub").read_text().strip()
        run([BIN / "trainer", "keygen", "--out", work / "keys" / "collector.key"], log=logs / "keygen-collector.log")
        collector_key = (work / "keys" / "collector.key.pub").read_text().strip()

        step("2. brokers (central + one per gateway, bridged) and two collectors on one shared subscription")
        central = Broker(work / "brokers" / "central", extra_conf="allow_anonymous true\nmax_queued_messages 0\n")
        central.start()
        brokers.append(central)
        local: dict[str, Broker] = {}
        for gw in GATEWAYS:
            local[gw] = Broker(work / "brokers" / gw, extra_conf=bridge_conf(gw, central))
            local[gw].start()
            brokers.append(local[gw])
        dataset_dir = work / "dataset"
        for member in (1, 2):
            spawn(f"collector-{member}", [BIN / "trainer", "collect", "--broker", f"{central.host}:{central.port}",
                                          "--out", dataset_dir, "--group", "collectors", "--member", member,
                                          "--key", work / "keys" / "collector.key"])
        print(f"central broker :{central.port}; gateways {', '.join(f'{g} :{b.port}' for g, b in local.items())}")

        step("3. two gateways score their machines (two pumps, a fan) and upload what matters")
        life = args.collect_s + 25.0
        for gw in GATEWAYS:
            for device, (g, group, _, _) in SENSORS.items():
                if g == gw:
                    shutil.copytree(current_dir / group, work / gw / "bundles" / device)
            config = agent_config(work, gw, local[gw].port, public_key, collector_key, calibrate)
            spawn(f"agent-{gw}", [BIN / "edge-agent", "run", "--config", config])
        for device, (gw, group, _, seed) in SENSORS.items():
            spawn(f"sim-{device}", [BIN / "firmware-sim", "run", "--signal", "bearing", "--preset", GROUPS[group][0],
                                    "--state", states[device], "--life", life, "--seed", seed, "--link", "mqtt",
                                    "--broker", f"127.0.0.1:{local[gw].port}", "--device", device, "--duration",
                                    3600])
        wait("sensors scoring", lambda: all(sensor_status(work, d).get("windows_scored", 0) > 20 for d in SENSORS),
             60, procs)
        t_stream = time.monotonic()
        while time.monotonic() - t_stream < args.collect_s:
            time.sleep(5)
            line = "  ".join(f"{d}: {sensor_status(work, d).get('windows_scored', 0)} windows, "
                             f"{sensor_status(work, d).get('alert_state', '?')}" for d in SENSORS)
            counts = {g: sum(k.values()) for g, k in dataset_counts(dataset_dir, "group").items()}
            print(f"[{time.monotonic() - t_stream:5.0f} s] {line}  dataset by group: {counts}", flush=True)
        wait("pump-b's alert escalated to critical", lambda: sensor_status(work, "pump-b").get("alert_state")
             == "critical", 60, procs)
        time.sleep(1.0)  # the windows after the escalation (context_after)
        kept = sensor_status(work, "pump-b").get("uploads_kept", {}).get("alert", 0)
        wait(f"pump-b's {kept} alert windows collected",
             lambda: dataset_counts(dataset_dir).get("pump-b", {}).get("alert", 0) >= kept, 60, procs)
        print(f"pump-b: alert critical, {kept} alert windows collected")

        step("4. one candidate per kind of machine, each compared with the model its group serves")
        out_dir = work / "bundles" / "retrained"
        retrain = run([BIN / "trainer", "retrain", "--by", "group", "--dataset", dataset_dir, "--current", current_dir,
                       "--out", out_dir, "--alert-margin-s", ALERT_MARGIN_S, "--epochs", "30",
                       *(["--serial"] if args.serial else [])], log=logs / "retrain.log",
                      outcome=lambda done: done.returncode == 1 and retrain_outcomes(out_dir) and all(
                          o["status"] in ("accepted", "refused") for o in retrain_outcomes(out_dir).values()))
        print(retrain.stdout)
        outcomes = retrain_outcomes(out_dir)
        accepted = [g for g, o in outcomes.items() if o["status"] == "accepted"]
        refused = {g: o["reason"] for g, o in outcomes.items() if o["status"] == "refused"}
        for g, reason in refused.items():
            print(f"the retrain gate refused group {g}'s new model; {current[g]} keeps serving its sensors "
                  f"({reason}; report: {out_dir / (g + '.retrain.md')})")

        step("5. signed rollouts, each to its kind of machine only" if accepted else "5. no rollout: the old models "
             "keep serving")
        new = dict(current)
        for g in accepted:
            new[g] = version(out_dir / g)
            members = [d for d, (_, grp, _, _) in SENSORS.items() if grp == g]
            publish = run([BIN / "trainer", "publish", out_dir / g, "--group", g, "--key", work / "keys" /
                           "rollout.key", "--broker", f"{central.host}:{central.port}", "--wait-s", "120", "--expect",
                           str(len(members))], log=logs / f"publish-{g}.log")
            print(publish.stdout)
        wait("each sensor serving its group's model",
             lambda: all(sensor_status(work, d).get("model_version") == new[g] for d, (_, g, _, _) in SENSORS.items()),
             60, procs)

        step("6. summary")
        print(f"{'gateway':8s} {'sensor':7s} {'group':6s} {'machine':10s} {'windows':>7s} {'alerts':>6s} "
              f"{'drift':>10s} {'kept (normal/alert/calib/drift)':>31s}  {'serves':28s} rollout")
        for device, (gw, group, _, _) in SENSORS.items():
            s = sensor_status(work, device)
            kept = s.get("uploads_kept", {})
            kinds = "/".join(str(kept.get(k, 0)) for k in ("normal", "alert", "calibration", "drift"))
            drift = s.get("drift") or {}
            print(f"{gw:8s} {device:7s} {group:6s} {states[device]:10s} {s.get('windows_scored', 0):7d} "
                  f"{s.get('alerts', 0):6d} {drift.get('state', '?'):>10s} {kinds:>31s}  "
                  f"{s.get('model_version', '?'):28s} {(s.get('rollout') or {}).get('state')}")
        print("uploads confirmed by the collectors: " + ", ".join(
            f"{gw} {(status(work, gw).get('uploads') or {}).get('confirmed', 0)}" for gw in GATEWAYS))
        print(f"\ndataset {dataset_dir} (windows by group and kind): {json.dumps(dataset_counts(dataset_dir, 'group'))}")
        print("written by collector: " + ", ".join(f"{k} {v}" for k, v in sorted(per_collector(dataset_dir).items())))
        for g in GROUPS:
            after = (f"{new[g]} (report: {out_dir / (g + '.retrain.md')})" if g in accepted else
                     f"{current[g]}, still serving: the retrained model was refused ({refused[g]})" if g in refused
                     else f"{current[g]}, still serving: not retrained")
            print(f"group {g}: model before {current[g]}; after {after}")
        print(f"whole loop in {time.monotonic() - t_start:.0f} s")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for b in brokers:
            b.stop()


if __name__ == "__main__":
    sys.exit(main())
