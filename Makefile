# Two commands on a fresh machine: `make repro` (set up, run the pipeline) and
# `make test` (set up, run the tests). Both are idempotent and offline apart
# from the package index.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
# dvc runs each stage's `python -m stages.X` through PATH: make it the venv's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup repro test test-fast lint format bench cross-cpu emulator real clean-outputs

setup: $(VENV)/.installed

# Reinstall when the dependencies or their pinned versions change.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

repro: setup
	dvc repro

# Lint and types first (seconds), then the suite on TEST_WORKERS pytest-xdist workers, a test file on
# one worker (its module fixtures built once; the pipeline run once for all: tests/conftest.py). The emulator (for
# tests/test_cross_cpu.py) is installed where it can be; elsewhere that test is skipped and says why.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: lint emulator
	pytest $(PYTEST_PARALLEL)

# The inner loop (under 3 minutes on 2 cores): the tests not marked slow, so no DVC pipeline, no
# shared trained model, no training beyond a few steps; no lint (`make lint`).
test-fast: setup
	pytest $(PYTEST_PARALLEL) -m "not slow"

# ruff (lint, import order, formatting) and mypy, as configured in pyproject.toml.
lint: setup
	ruff check .
	ruff format --check .
	mypy

# Reformat the code and apply ruff's safe fixes; `make lint` then says what is left.
format: setup
	ruff format . && ruff check --fix .

# Speed benchmarks (minutes; results in bench/results/*.json, figures in the README).
bench: setup
	python -m bench.bench_tfrecords_imdb
	python -m bench.bench_tfrecords_fer2013
	python -m bench.bench_input_pipelines
	python -m bench.bench_train_emotion_cnn
	python -m bench.bench_fer2013_epoch
	python -m bench.bench_sentiment_rnn
	python -m bench.bench_numerics
	python -m bench.bench_pipeline

# qemu-user runs x86-64 programs on emulated CPUs (other vendors, caches, instruction sets): the
# cross-CPU check needs it. Installed with apt-get where this runs as root on Debian/Ubuntu;
# otherwise one line says how, and nothing fails here (`make cross-cpu` fails without it).
emulator:
	@command -v qemu-x86_64 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing qemu-user (apt-get) for the cross-CPU check"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null; } \
	      || echo "note: apt-get could not install qemu-user: tests/test_cross_cpu.py will be skipped"; \
	  else \
	    echo "note: qemu-x86_64 not found; install qemu-user (e.g. sudo apt-get install qemu-user) for the cross-CPU check"; \
	  fi; }

# Every model's training slice natively and on six emulated CPUs (about 15 min on 2 cores):
# bench/results/cross_cpu.json, the README's cross-CPU table.
cross-cpu: setup emulator
	python -m bench.cross_cpu

# The pipeline on the three real datasets as a DVC experiment (recipes/real-data.yaml; hours on
# 2 cores). FER2013=, IMDB=, SERIES= give local copies: make real FER2013=~/fer2013.csv
real: setup
	python -m stages.apps.real_data $(if $(FER2013),--fer2013 "$(FER2013)") $(if $(IMDB),--imdb "$(IMDB)") \
		$(if $(SERIES),--series "$(SERIES)")

# Remove generated outputs (not metrics/ and plots/, which git tracks).
clean-outputs:
	rm -rf data models checkpoints
