# The verbs people use. Everything runs inside .venv, created by `make setup`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp

# Central retraining default: the IMS test-2 tutorial table shipped in data/.
DATA    ?= data/ims_bearing/averaged/2nd_test_resmaple_10minutes.csv
OUT     ?= bundles/ims-test2
# Skip the first hour (run-in) and the two snapshots after shutdown; train before the tutorial's cut.
TRAIN_ARGS ?= --format ims-avg --start 2004-02-12T11:32:39 --end 2004-02-19T06:12:39 \
              --train-until 2004-02-15T12:52:39 --window 10 --hop 1 --quantize int8

# Retraining on what the fleet collected (trainer collect --out $(DATASET)), proved against the served bundle.
DATASET ?= runs/fleet/dataset
CURRENT ?= bundles/current
NEW     ?= bundles/retrained
RETRAIN_ARGS ?=

.PHONY: setup system-packages test docs lint export-tflite train bench evaluate demo demo-mqtt soak check-aarch64 retrain demo-fleet clean

# The Debian packages (mosquitto, sqlite3, python3-venv, faketime, systemd, chromium), installed when missing, then .venv.
setup: system-packages $(STAMP)

system-packages:
	@scripts/system_packages.sh

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[agent,sim,trainer,fleet,dev,docs]'
	touch $(STAMP)

test: setup
	$(BIN)/pytest -q

# The documentation site (docs/, mkdocs.yml): a strict build, so a broken link, a missing page or a page left out
# of the nav fails; the reference pages are generated from the code at build time (docs/hooks.py).
docs: setup
	$(BIN)/mkdocs build --strict --quiet -d runs/site

lint: setup
	$(BIN)/ruff check trainer edge_agent firmware_sim tests bench scripts

export-tflite: setup
	$(BIN)/trainer train --data $(DATA) --out $(OUT) $(TRAIN_ARGS)
	$(BIN)/trainer inspect $(OUT)

train: export-tflite

bench: export TF_CPP_MIN_LOG_LEVEL = 2
bench: setup
	$(PY) bench/bench_export.py
	$(PY) bench/bench_sim.py --duration 5
	$(PY) bench/bench_agent.py
	$(PY) bench/bench_web.py
	$(PY) bench/bench_payloads.py
	$(PY) bench/bench_sensors.py
	$(PY) bench/bench_flood.py
	$(PY) bench/bench_fleet.py
	$(PY) bench/bench_severity.py --data $(SHARED_DATA)
	$(PY) bench/bench_diagnosis.py --data $(SHARED_DATA)
	$(PY) bench/bench_alert_costs.py
	$(PY) bench/bench_dataset_summary.py --s3 --compact --out runs/bench_dataset_summary.json
	$(PY) bench/bench_fleet_scale.py

# Detection benchmark (not CI): default options on the shared data, the gateway's pipeline, baselines.
SHARED_DATA ?= ../shared/data
EVAL_OUT    ?= runs/evaluate
evaluate: export TF_CPP_MIN_LOG_LEVEL = 2
evaluate: setup
	$(BIN)/trainer evaluate --data $(SHARED_DATA) --suite bench/evaluate_shared.toml --out $(EVAL_OUT)

demo: setup
	$(PY) scripts/demo.py --link serial

demo-mqtt: setup
	$(PY) scripts/demo.py --link mqtt

# Not in CI. 30 minutes at full rate on several sensors with injected faults (runs/soak/): SOAK_ARGS=--minutes 5
SOAK_ARGS ?=
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)

# Not in CI. The agent on an arm64 Debian root under qemu-user (runs/aarch64/; needs root or sudo; minutes).
check-aarch64: setup
	scripts/check_aarch64.sh

retrain: setup
	$(BIN)/trainer retrain --dataset $(DATASET) --current $(CURRENT) --out $(NEW) $(RETRAIN_ARGS)
	$(BIN)/trainer inspect $(NEW)

demo-fleet: setup
	$(PY) scripts/demo_fleet.py

clean:
	rm -rf --one-file-system bundles runs .pytest_cache
