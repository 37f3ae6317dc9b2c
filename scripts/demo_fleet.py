"""The fleet loop on one machine: two gateways, alerts, uploads, collection, retraining that proves itself,
a signed rollout, and the gateways reporting the new version.

1. a first model is trained on a bench recording: 10 s of a healthy bearing (firmware_sim, IMS-like: 20 kHz x 4
   channels, features mode) on a test stand whose worn drive adds harder random impacts than the plant's pumps
   (``--override roughness_g=0.15``, the pumps 0.12): the served model learned those impacts as normal, so in the
   field it sits at about half its threshold and a bearing fault (an impact train) must grow before it alerts;
2. three mosquittos: the central broker and one per gateway, bridged to it (examples/mosquitto-bridge.conf);
   two `trainer collect` processes share one MQTT 5 subscription into a Parquet dataset;
3. two gateways (`edge-agent run`, one sensor each) score simulated bearings streamed over their local broker:
   pump-a stays healthy, pump-b develops an outer-race fault over ``--collect-s`` + 25 s (firmware_sim's profile:
   healthy to 60 % of that life, incipient to 85 %); they keep reservoir samples of normal windows and the windows
   around each alert, and upload them (spool -> local broker -> bridge -> collectors); streaming goes on until
   pump-b's alert has escalated to critical and its windows are collected: a fault both models see clearly;
4. `trainer retrain` trains on the collected healthy windows (plus the bench recording), leaving out pump-b's
   windows from 20 s before its alert (``--alert-margin-s``: the incipient fault; a day in the field), compares the
   new model with the served one on held-out normal and alert windows, and writes the new bundle with its
   comparison: it has learned the plant's quieter normal and sees pump-b's fault with a wider margin. When the
   gate refuses it (``--bad-data`` shows one), the demo shows the table and the reason, the old model keeps
   serving, and step 5 is skipped;
5. `trainer publish` signs it (Ed25519) and sends it to the fleet; each gateway verifies it, shadow-scores it
   beside its model, swaps it in, and reports its rollout state;
6. a summary: what each gateway saw, kept and serves, what the dataset holds, the comparison, the rollout.

Run with ``make demo-fleet``; everything lands in ``runs/demo-fleet/``. About two minutes on 2 cores.
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

RATE = 20_000
GATEWAYS = {"gw-a": ("pump-a", "healthy"), "gw-b": ("pump-b", "degrading")}
FEATURES = "rms,peak,kurtosis,crest"
BENCH = ["--override", "roughness_g=0.15"]  # the test stand's harder random impacts (the pumps: the preset's 0.12)
ALERT_MARGIN_S = 20  # pump-b's life is 70 s, its incipient stage from 42 s; the alert comes at about 50 s
LOG_TAIL = 60  # lines of a failed step's log shown (a whole comparison table and what follows it)


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def refusal(done: subprocess.CompletedProcess) -> str | None:
    """The reason ``trainer retrain`` refused the new model (exit 1, last line ``refused: ...``), else None."""
    last = done.stdout.rstrip().rpartition("\n")[2]
    return last.removeprefix("refused: ") if done.returncode == 1 and last.startswith("refused: ") else None


def run(cmd: list, log: Path | None = None, *, may_refuse: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a step; its log goes to ``log`` (its tail shown when it fails). With ``may_refuse`` a refusal by the
    retrain gate is an outcome (returned), not a failure."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    if log is None:
        return subprocess.run([str(c) for c in cmd], check=True, env=env, **kwargs)
    with open(log, "w") as f:
        done = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=f, text=True, env=env, **kwargs)
    if done.returncode != 0 and not (may_refuse and refusal(done)):
        print(done.stdout + "\n".join(log.read_text().splitlines()[-LOG_TAIL:]))
        raise SystemExit(f"{cmd[1]} {cmd[2]} failed with exit code {done.returncode} (log: {log})")
    return done


def bridge_conf(gateway: str, central: Broker) -> str:
    text = (REPO / "examples" / "mosquitto-bridge.conf").read_text()
    keep = [ln for ln in text.splitlines()
            if not re.match(r"\s*(listener|persistence|persistence_location|autosave_interval|allow_anonymous|"
                            r"password_file|acl_file|local_username|local_password|remote_username|remote_password)\b",
                            ln)]  # the demo's brokers are anonymous on loopback; the tests run the example's ACLs
    conf = re.sub(r"(?m)^address .*$", f"address {central.host}:{central.port}", "\n".join(keep))
    conf = re.sub(r"(?m)^restart_timeout .*$", "restart_timeout 1 5", conf)
    return "allow_anonymous true\n" + conf.replace("GATEWAY-ID", gateway) + "\n"


def agent_config(work: Path, gateway: str, device: str, port: int, public_key: str, collector_key: str,
                 calibrate: int = 0) -> Path:
    path = work / gateway / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""gateway = "{gateway}"

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

[[sensors]]
device = "{device}"
[sensors.source]
kind = "mqtt"
sample_rate = {RATE}
[sensors.bundle]
path = "bundle"
watch_s = 1.0
[sensors.alerts]
cooldown_s = 5.0
[sensors.alerts.sinks]
jsonl = "alerts.jsonl"
""" + (f"[sensors.calibration]\nwindows = {calibrate}\n" if calibrate else ""))
    return path


def status(work: Path, gateway: str) -> dict:
    try:
        return json.loads((work / gateway / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def sensor_status(work: Path, gateway: str) -> dict:
    return next(iter(status(work, gateway).get("sensors", {}).values()), {})


def wait(what: str, predicate, timeout: float, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{what}: {p.args[0]} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def dataset_counts(root: Path) -> dict:
    from trainer import dataset

    if not root.exists():
        return {}
    table = dataset.read_table(root, columns=["device", "kind"])
    out: dict = {}
    for device, kind in zip(table.column("device").to_pylist(), table.column("kind").to_pylist(), strict=True):
        out.setdefault(device, {}).setdefault(kind, 0)
        out[device][kind] += 1
    return out


def per_collector(root: Path) -> dict[str, int]:
    """Windows each collector wrote (its id is in its files' names)."""
    import pyarrow.parquet as pq

    out: dict[str, int] = {}
    for f in root.rglob("part-*.parquet"):
        member = "member " + f.name.split("-")[-3]  # part-collect-<group>-<host>-<member>-<n>-<rand>.parquet
        out[member] = out.get(member, 0) + pq.read_metadata(f).num_rows
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "runs" / "demo-fleet")
    ap.add_argument("--collect-s", type=float, default=45.0, help="seconds of streaming before retraining (at least; "
                    "then until pump-b's alert is critical); pump-b's bearing fails after this + 25 s")
    ap.add_argument("--bad-data", action="store_true", help="pump-a is already damaged and its gateway calibrates its "
                    "threshold on it, so its 'healthy' uploads hold the fault: the retrain gate refuses the new model")
    args = ap.parse_args()
    machines = GATEWAYS | ({"gw-a": ("pump-a", "broken")} if args.bad_data else {})
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t_start = time.monotonic()
    procs: list[subprocess.Popen] = []
    brokers: list[Broker] = []
    logs = work / "logs"
    logs.mkdir()

    def spawn(name: str, cmd: list) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process at the end)
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, cwd=work)
        procs.append(p)
        return p

    try:
        step("1. a first model, trained on a bench recording of a healthy bearing (a rougher test stand)")
        run([BIN / "firmware-sim", "generate", "--signal", "bearing", "--preset", "ims", "--state", "healthy", *BENCH,
             "--samples", str(RATE * 10), "--seed", "1", "--out", work / "healthy.npy"])
        run([BIN / "trainer", "train", "--data", work / "healthy.npy", "--format", "npy", "--mode", "features",
             "--block", "1024", "--window", "8", "--hop", "2", "--features", FEATURES, "--model", "conv1d",
             "--units", "16,8", "--epochs", "30", "--patience", "5", "--batch-size", "16", "--model-id", "fleet-conv",
             "--out", work / "bundles" / "current"], log=logs / "train.log")
        current = json.loads((work / "bundles" / "current" / "manifest.json").read_text())["model"]["version"]
        print(f"serving {current}")
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

        step("3. two gateways score their machines and upload what matters")
        life = args.collect_s + 25.0
        for gw, (device, state) in machines.items():
            shutil.copytree(work / "bundles" / "current", work / gw / "bundle")
            config = agent_config(work, gw, device, local[gw].port, public_key, collector_key,
                                  100 if state == "broken" else 0)
            spawn(f"agent-{gw}", [BIN / "edge-agent", "run", "--config", config])
            spawn(f"sim-{gw}", [BIN / "firmware-sim", "run", "--signal", "bearing", "--preset", "ims", "--state", state,
                                "--life", life, "--seed", 7 if gw == "gw-a" else 8, "--link", "mqtt", "--broker",
                                f"127.0.0.1:{local[gw].port}", "--device", device, "--duration", 3600])
        wait("gateways scoring", lambda: all(sensor_status(work, g).get("windows_scored", 0) > 20 for g in GATEWAYS),
             60, procs)
        t_stream = time.monotonic()
        while time.monotonic() - t_stream < args.collect_s:
            time.sleep(5)
            counts = dataset_counts(dataset_dir)
            line = "  ".join(f"{g}: {sensor_status(work, g).get('windows_scored', 0)} windows, "
                             f"alert {sensor_status(work, g).get('alert_state', '?')}" for g in GATEWAYS)
            print(f"[{time.monotonic() - t_stream:5.0f} s] {line}  dataset: {counts}", flush=True)
        wait("pump-b's alert escalated to critical", lambda: sensor_status(work, "gw-b").get("alert_state") == "critical",
             60, procs)
        time.sleep(1.0)  # the windows after the escalation (context_after)
        kept = sensor_status(work, "gw-b").get("uploads_kept", {}).get("alert", 0)
        wait(f"pump-b's {kept} alert windows collected",
             lambda: dataset_counts(dataset_dir).get("pump-b", {}).get("alert", 0) >= kept, 60, procs)
        print(f"pump-b: alert critical, {kept} alert windows collected")

        step("4. retrain on the collected windows, compared with the served model")
        retrain = run([BIN / "trainer", "retrain", "--dataset", dataset_dir, "--current", work / "bundles" / "current",
                       "--out", work / "bundles" / "retrained", "--data", work / "healthy.npy", "--format", "npy",
                       "--alert-margin-s", ALERT_MARGIN_S, "--epochs", "30"], log=logs / "retrain.log", may_refuse=True)
        print(retrain.stdout)
        refused = refusal(retrain)
        if refused:
            print(f"the retrain gate refused the new model; {current} keeps serving (log: {logs / 'retrain.log'})")
            step("5. no rollout: the old model keeps serving")
            new = current
        else:
            new = json.loads((work / "bundles" / "retrained" / "manifest.json").read_text())["model"]["version"]
            step("5. a signed rollout to the fleet")
            publish = run([BIN / "trainer", "publish", work / "bundles" / "retrained", "--to", "fleet", "--key",
                           work / "keys" / "rollout.key", "--broker", f"{central.host}:{central.port}", "--wait-s",
                           "120", "--expect", str(len(GATEWAYS))], log=logs / "publish.log")
            print(publish.stdout)
            wait("gateways serving the new model",
                 lambda: all(sensor_status(work, g).get("model_version") == new for g in GATEWAYS), 60, procs)

        step("6. summary")
        print(f"{'gateway':8s} {'sensor':7s} {'machine':10s} {'windows':>7s} {'alerts':>6s} {'drift':>10s} "
              f"{'kept (normal/alert/calib/drift)':>31s} {'confirmed':>9s}  {'serves':28s} rollout")
        for gw, (device, state) in machines.items():
            g, s = status(work, gw), sensor_status(work, gw)
            kept = s.get("uploads_kept", {})
            kinds = "/".join(str(kept.get(k, 0)) for k in ("normal", "alert", "calibration", "drift"))
            drift = s.get("drift") or {}
            print(f"{gw:8s} {device:7s} {state:10s} {s.get('windows_scored', 0):7d} {s.get('alerts', 0):6d} "
                  f"{drift.get('state', '?'):>10s} {kinds:>31s} {(g.get('uploads') or {}).get('confirmed', 0):9d}  "
                  f"{s.get('model_version', '?'):28s} {(s.get('rollout') or {}).get('state')}")
        print(f"\ndataset {dataset_dir} (windows by device and kind): {json.dumps(dataset_counts(dataset_dir))}")
        print("written by collector: " + ", ".join(f"{k} {v}" for k, v in sorted(per_collector(dataset_dir).items())))
        print(f"model before: {current}\nmodel after:  " + (f"{current}, still serving: the retrained model was "
              f"refused ({refused})" if refused else f"{new} (report: {work / 'bundles' / 'retrained' / 'report'})"))
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
