#!/usr/bin/env bash
# The Debian packages the project needs, installed only when missing (`make setup` and .ci/run call this).
#
#   mosquitto      the tests' and demos' MQTT broker (started by them on free loopback ports)
#   sqlite3        the spool's shell, for technicians and the hostile-use tests
#   python3-venv   `make setup` makes .venv with it
#   faketime       libfaketime: the clock-jump fault tests move the wall clock of a real agent process
#   systemd        systemd-analyze verify checks the unit that `edge-agent install` writes
#   chromium, chromium-driver   the status page's browser test
#
# apt-get runs as root, or through sudo; where neither is possible it says what to install and fails.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
need=()
have mosquitto || need+=(mosquitto)
have sqlite3 || need+=(sqlite3)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
have faketime || need+=(faketime)
have systemd-analyze || need+=(systemd)
{ have chromium && have chromedriver; } || need+=(chromium chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: not a Debian system (no apt-get): install these with your package manager: ${need[*]}" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup: the system packages ${need[*]} are missing, and installing them needs root: run" >&2
  echo "    su -c 'apt-get update && apt-get install -y ${need[*]}'" >&2
  echo "then run make again." >&2
  exit 1
fi
echo "setup: installing with apt-get: ${need[*]}"
if ! { "${as_root[@]}" apt-get update -qq &&
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; }; then
  echo "setup: apt-get could not install ${need[*]}: install them as root, then run make again" >&2
  exit 1
fi
