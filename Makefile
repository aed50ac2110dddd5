# vlaforge: `make demo` and `make test` work on a fresh machine; both go through `make setup`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.setup-done
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

# The stamp depends on pyproject.toml, so a dependency change re-runs setup; otherwise setup is instant.
$(STAMP): pyproject.toml
	@if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then \
	  echo "installing libosmesa6 (CPU rendering for MuJoCo)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q libosmesa6 || ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q libosmesa6); \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned, so the CPU wheel is used; the package's torch>=2.6 is then already satisfied.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[sim,dev]"
	# openpi-client, for the serving tests: --no-deps because it pins numpy<2 (its needs are installed above).
	$(PIP) install -q --no-deps "openpi-client==0.1.2"
	# robosuite, the second simulator (--env robosuite): --no-deps because it pins numpy<2; what it imports
	# at run time (numba, termcolor, opencv-python-headless) comes with the `sim` extra above.
	$(PIP) install -q --no-deps "robosuite==1.5.2"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/vlaforge demo

test: setup
	$(VENV)/bin/pytest -q -m "not gpu"

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow and not gpu"

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: setup
	$(PY) bench/bench_data.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_eval.py
	$(PY) bench/bench_eval_batched.py
	$(PY) bench/bench_rlds.py
	$(PY) bench/bench_serve.py
	$(PY) bench/bench_quantize.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
