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

.PHONY: setup repro test lint format bench real clean-outputs

setup: $(VENV)/.installed

# Reinstall when the dependencies or their pinned versions change.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

repro: setup
	dvc repro

# Lint and types first (seconds), then the suite.
test: lint
	pytest

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
	python bench/bench_tfrecords_imdb.py
	python bench/bench_tfrecords_fer2013.py
	python bench/bench_input_pipelines.py
	python bench/bench_train_emotion_cnn.py
	python bench/bench_sentiment_rnn.py
	python bench/bench_numerics.py

# The pipeline on the three real datasets as a DVC experiment (recipes/real-data.yaml; hours on
# 2 cores). FER2013=, IMDB=, SERIES= give local copies: make real FER2013=~/fer2013.csv
real: setup
	python -m stages.apps.real_data $(if $(FER2013),--fer2013 "$(FER2013)") $(if $(IMDB),--imdb "$(IMDB)") \
		$(if $(SERIES),--series "$(SERIES)")

# Remove generated outputs (not metrics/ and plots/, which git tracks).
clean-outputs:
	rm -rf data models checkpoints
