#!/usr/bin/env bash
# make check-aarch64: the gateway package on an arm64 Debian root, run under qemu-user (not in CI; minutes).
#
#   1. debootstrap --foreign an arm64 Debian (bookworm, minbase + python3-venv) into $ROOT (cached: kept
#      for the next run; `rm -rf runs/aarch64` starts again);
#   2. its second stage, and everything after, runs in a chroot whose arm64 programs the kernel hands to
#      qemu-aarch64-static through binfmt_misc. Debian's qemu-user-static ships the registration
#      (/usr/lib/binfmt.d/qemu-aarch64.conf) and systemd-binfmt loads it at boot; where nothing did (a
#      container without systemd), this script mounts binfmt_misc and loads that same line (root only). Every
#      program is emulated, also those that dpkg, venv and pip start as children: running the emulator on
#      python alone (`qemu-aarch64-static -L ROOT`) cannot run debootstrap's second stage nor pip's build
#      subprocesses, and proot -q (bookworm's 5.1) does not translate statx/faccessat2 paths, so dash's
#      `test -x` and coreutils fail under it;
#   3. in the arm64 root: python3 -m venv, pip install '/src[agent]' (aarch64 wheels from PyPI),
#      edge-agent validate-config, edge-agent replay of a bundle trained here on x86;
#   4. the arm64 scores are compared with the x86 replay of the same bundle and recording: equal within the
#      bundle's own parity tolerance (its served variant's max relative error against Keras), and the same
#      alarm decision for every window; the emulated per-window latency is measured (emulation is slow:
#      it says nothing about a real Cortex-A core).
#
# Writes runs/aarch64/report.json and prints a summary. Exit 0 when every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${AARCH64_WORK:-runs/aarch64}
ROOT=$WORK/rootfs
SUITE=${AARCH64_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUNDLE=${AARCH64_BUNDLE:-bundles/ims-test2}
DATA=${AARCH64_DATA:-data/ims_bearing/averaged/2nd_test_resmaple_10minutes.csv}
FORMAT=${AARCH64_FORMAT:-ims-avg}
PY=.venv/bin/python

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "check-aarch64: needs root (or sudo) for: $*" >&2; exit 2; fi; }
t_start=$(date +%s)
phase() { echo "== [$(( $(date +%s) - t_start )) s] $*"; }
declare -A took

need=()
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
  phase "installing with apt-get: ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
QEMU=$(command -v qemu-aarch64-static)
DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)
mkdir -p "$WORK"

# binfmt_misc: arm64 ELF files run through qemu-aarch64-static
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e $BINFMT/qemu-aarch64 ]; then
  phase "registering qemu-aarch64 with binfmt_misc (Debian's /usr/lib/binfmt.d/qemu-aarch64.conf)"
  mountpoint -q $BINFMT || as_root mount -t binfmt_misc binfmt_misc $BINFMT || {
    echo "check-aarch64: cannot mount binfmt_misc (no permission in this container?): arm64 programs cannot run" >&2
    exit 2; }
  as_root sh -c "cat /usr/lib/binfmt.d/qemu-aarch64.conf > $BINFMT/register" || {
    echo "check-aarch64: cannot register qemu-aarch64 with binfmt_misc" >&2; exit 2; }
fi
grep -qx enabled $BINFMT/qemu-aarch64 || { echo "check-aarch64: binfmt qemu-aarch64 is disabled" >&2; exit 2; }

# Guest commands: a chroot into the arm64 root with /proc, /dev, /sys and the source tree mounted.
mounted=()
mount_guest() {
  local what
  # /dev: the first stage made its own nodes (null, zero, urandom, ...). Not /sys: with the host's CPU topology
  # there and the host's x86 /proc/cpuinfo, the arm64 cpuinfo library inside LiteRT crashes under qemu-user
  # (SIGSEGV creating the interpreter); without it cpuinfo says it cannot parse the CPU lists and carries on.
  for what in proc; do
    mountpoint -q "$ROOT/$what" && continue
    mkdir -p "$ROOT/$what"; as_root mount --bind "/$what" "$ROOT/$what"; mounted+=("$ROOT/$what")
  done
  mkdir -p "$ROOT/src" "$WORK/src"
  mountpoint -q "$ROOT/src" || { as_root mount --bind "$WORK/src" "$ROOT/src"; mounted+=("$ROOT/src"); }
}
unmount_guest() { local m; for m in "${mounted[@]}"; do as_root umount -l "$m" || true; done; mounted=(); }
trap unmount_guest EXIT
guest() { as_root chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/opt/edge-agent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
  PIP_NO_INPUT=1 "$@"; }

# 1+2. the arm64 root
t=$(date +%s)
if [ ! -e "$ROOT/.edge-agent-rootfs-ok" ]; then
  [ -d "$ROOT" ] && { unmount_guest; as_root rm -rf --one-file-system "$ROOT"; }
  phase "debootstrap --foreign arm64 $SUITE from $MIRROR (first stage, on the host)"
  as_root "$DEBOOTSTRAP" --foreign --arch=arm64 --variant=minbase --include=python3-venv,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR"
  phase "debootstrap second stage in the chroot (slow: every dpkg step is emulated)"
  if [ -L "$ROOT/proc" ]; then rm "$ROOT/proc"; fi  # the first stage leaves a symlink to /proc
  mount_guest
  guest /debootstrap/debootstrap --second-stage
  touch "$ROOT/.edge-agent-rootfs-ok"
else
  phase "arm64 root cached in $ROOT"
fi
mount_guest
took[rootfs]=$(( $(date +%s) - t ))
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# the host's CA bundle: where the registries are reached through a TLS proxy, the guest's pip needs its CA too
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOT/etc/ssl/certs/host-ca.crt"
guest /usr/bin/uname -m | grep -qx aarch64 || { echo "check-aarch64: the guest is not aarch64" >&2; exit 1; }

# 3. the package, as a gateway installs it
phase "copy the working tree to $WORK/src (tracked and untracked files, as git lists them)"
find "$WORK/src" -mindepth 1 -delete
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
t=$(date +%s)
phase "in the guest: python3 -m venv /opt/edge-agent && pip install '/src[agent]'"
guest /usr/bin/python3 -m venv /opt/edge-agent
guest /opt/edge-agent/bin/pip install -q '/src[agent]'
took[pip_install]=$(( $(date +%s) - t ))
guest /opt/edge-agent/bin/pip list --format=freeze > "$WORK/guest-pip-freeze.txt"
guest /opt/edge-agent/bin/python -c 'import sys, platform; print(platform.machine(), sys.version.split()[0])'

# 4. a bundle made here (x86), its x86 replay, then the same in the guest
if [ ! -e "$BUNDLE/manifest.json" ]; then
  phase "training $BUNDLE on x86 (make export-tflite)"
  make export-tflite OUT="$BUNDLE"
fi
rm -rf "$WORK/src/bundle" && cp -r "$BUNDLE" "$WORK/src/bundle"
cat > "$WORK/src/gateway.toml" <<EOF
device = "arm64-check"
[source]
kind = "serial"
[source.serial]
port = "/dev/ttyAMA0"
[bundle]
path = "bundle"
EOF
phase "x86 replay"
.venv/bin/edge-agent replay --bundle "$BUNDLE" --data "$DATA" --format "$FORMAT" --out "$WORK/scores-x86_64.csv"
t=$(date +%s)
phase "guest: edge-agent validate-config"
guest /opt/edge-agent/bin/edge-agent validate-config /src/gateway.toml
phase "guest: edge-agent replay"
guest /opt/edge-agent/bin/edge-agent replay --bundle /src/bundle --data "/src/$DATA" --format "$FORMAT" \
  --out /src/scores-aarch64.csv
cp "$WORK/src/scores-aarch64.csv" "$WORK/scores-aarch64.csv"
took[guest_run]=$(( $(date +%s) - t ))
phase "guest: per-window latency (scale + int8 invoke + error), emulated"
guest /opt/edge-agent/bin/python - > "$WORK/latency-aarch64.json" <<'EOF'
import json, platform, time
import numpy as np
from edge_agent.contract.bundle import Bundle
from edge_agent.scorer import Scorer
b = Bundle.load("/src/bundle")
s = Scorer(b)
rng = np.random.default_rng(0)
lo, hi = b.scaler.minimum, b.scaler.maximum
w = (lo + (hi - lo) * rng.random((200, b.spec.window, b.spec.n_features))).astype(np.float32)
s.score(w[0])
ms = []
for x in w:
    t0 = time.perf_counter(); s.score(x); ms.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"machine": platform.machine(), "windows": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                  "p99_ms": float(np.percentile(ms, 99))}))
EOF

phase "compare"
EDGE_TOOK="$(for k in "${!took[@]}"; do printf '%s=%s ' "$k" "${took[$k]}"; done)" $PY - "$WORK" "$BUNDLE" <<'EOF'
import csv, json, os, sys
from pathlib import Path
import numpy as np
work, bundle = Path(sys.argv[1]), Path(sys.argv[2])
manifest = json.loads((bundle / "manifest.json").read_text())
def rows(p):
    with open(p, newline="") as f:
        return list(csv.DictReader(f))
x86, arm = rows(work / "scores-x86_64.csv"), rows(work / "scores-aarch64.csv")
assert len(x86) == len(arm) and x86, f"window counts differ: x86 {len(x86)}, aarch64 {len(arm)}"
a = np.array([float(r["score"]) for r in x86]); b = np.array([float(r["score"]) for r in arm])
thr = np.array([float(r["threshold"]) for r in x86])
rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-12)
served = manifest["parity"]["variant"]
tol = float(manifest["variants"][served]["parity"]["max_rel_error"])
same_side = float(np.mean((a > thr) == (b > thr)))
same_state = sum(r["state"] == s["state"] and r["event"] == s["event"] for r, s in zip(x86, arm))
lat = json.loads((work / "latency-aarch64.json").read_text())
took = dict(kv.split("=") for kv in os.environ["EDGE_TOOK"].split())
report = {"windows": len(a), "max_abs_diff": float(np.max(np.abs(a - b))), "max_rel_diff": float(rel.max()),
          "parity_tolerance_rel": tol, "decision_agreement": same_side,
          "windows_with_different_scores": int((a != b).sum()), "same_alert_state_rows": same_state,
          "latency_emulated": lat, "seconds": {k: int(v) for k, v in took.items()}}
(work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
# the bundle's parity gate: scores within its served variant's max relative error against Keras, and the
# alarm decision (score above the threshold) agreeing at least as often as the gate requires
min_agreement = float(manifest["parity"].get("min_agreement", 0.99))
ok = rel.max() <= tol and same_side >= min_agreement
print("check-aarch64:", "OK" if ok else "FAILED", f"({len(a)} windows; max rel. diff {rel.max():.3g} (tolerance "
      f"{tol:.3g}); decisions agree on {same_side:.4f} (gate {min_agreement}); alert state rows equal "
      f"{same_state}/{len(a)})")
sys.exit(0 if ok else 1)
EOF
phase "done"
