# vlaforge: `make demo` and `make test` work on a fresh machine; both go through `make setup`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.setup-done
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup demo test test-fast lint bench bench-quick bench-openvla bench-heads bench-mt50 clean

setup: $(STAMP)

# The stamp depends on pyproject.toml, so a dependency change re-runs setup; otherwise setup is instant.
$(STAMP): pyproject.toml
	@if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then \
	  echo "installing libosmesa6 (CPU rendering for MuJoCo)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q libosmesa6 || ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q libosmesa6); \
	fi
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  echo "installing chromium (headless: the web UI's browser tests drive it)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium || ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium); \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned, so the CPU wheel is used; the package's torch>=2.6 is then already satisfied.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[sim,dev,ui]"
	# openpi-client, for the serving tests: --no-deps because it pins numpy<2 (its needs are installed above).
	$(PIP) install -q --no-deps "openpi-client==0.1.2"
	# robosuite, the second simulator (--env robosuite): --no-deps because it pins numpy<2; what it imports
	# at run time (numba, termcolor, opencv-python-headless) comes with the `sim` extra above.
	$(PIP) install -q --no-deps "robosuite==1.5.2"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/vlaforge demo

# Two worker processes of one thread each, then the tests marked serial alone (tests/conftest.py).
test: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n 2 --dist worksteal -m "not gpu and not serial" --durations=15
	$(VENV)/bin/pytest -q -m "serial and not gpu" --durations=5

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow and not gpu"

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# `make bench` runs every benchmark the README quotes (hours on 2 cores); each part also runs alone.
# Every script prints a table and writes bench/results/<name>.json.
bench: bench-quick bench-openvla bench-heads bench-mt50

bench-quick: setup  # minutes each
	$(PY) bench/bench_data.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_eval.py
	$(PY) bench/bench_eval_batched.py
	$(PY) bench/bench_rlds.py
	$(PY) bench/bench_rlds.py --memory-scaling 25,100,400
	$(PY) bench/bench_serve.py
	$(PY) bench/bench_quantize.py
	$(PY) bench/bench_fast.py
	$(PY) bench/bench_cli.py
	$(PY) bench/bench_idm.py

bench-openvla: setup  # writes 15 GB of random OpenVLA-7B weights to /tmp and needs ~16 GB of RAM
	$(PY) bench/bench_openvla.py --actions 2

bench-heads: setup  # every action head trained and evaluated on the demo tasks, then five medium tasks
	$(PY) bench/heads.py
	$(PY) bench/heads.py --tasks medium --eval-episodes 10

# MT50: collect, train the recipe, evaluate under both protocols, report (file targets: a finished stage
# is not run again; an interrupted training run resumes).
MT50 := bench/runs/mt50
bench-mt50: setup $(MT50)/eval500/eval_info.json $(MT50)/eval100/eval_info.json
	$(PY) bench/mt50_report.py --eval $(MT50)/eval500/eval_info.json --eval-100 $(MT50)/eval100/eval_info.json

$(MT50)/data/meta/info.json:
	$(VENV)/bin/vlaforge collect --tasks mt50 --episodes 50 --image-size 64 --workers 2 --out $(MT50)/data

$(MT50)/run/finished: $(MT50)/data/meta/info.json
	OMP_NUM_THREADS=1 $(VENV)/bin/vlaforge train --recipe mt50 --dataset $(MT50)/data --out $(MT50)/run \
	  $(if $(wildcard $(MT50)/run/last),--resume)
	@touch $@

$(MT50)/eval500/eval_info.json: $(MT50)/run/finished
	$(VENV)/bin/vlaforge eval --policy $(MT50)/run/last --tasks mt50 --episodes 10 --protocol vlaforge \
	  --out $(MT50)/eval500

$(MT50)/eval100/eval_info.json: $(MT50)/run/finished
	$(VENV)/bin/vlaforge eval --policy $(MT50)/run/last --tasks mt50 --episodes 10 --protocol rlinf-100 \
	  --out $(MT50)/eval100

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
