# Two commands for a newcomer: `make serve` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PORT ?= 3000
GRPC_PORT ?= 3001
UV_VERSION := 0.13.9
export GRPC_PORT

BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed

.PHONY: help setup model serve test lint format lock clean bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(UV): | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): requirements/dev.txt pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -r requirements/dev.txt
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

setup: $(STAMP) ## create the virtualenv and install the locked dependencies

model: setup ## train and register the example model if the model store has none
	$(BIN)/python -m models.train --if-missing

serve: model ## set up, register the model if absent, serve HTTP on PORT and gRPC on GRPC_PORT
	$(BIN)/bentoml serve --port $(PORT)

test: setup lint ## set up and run the whole test suite
	$(BIN)/pytest

lint: setup ## ruff: lint and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: | $(UV) ## re-resolve requirements/*.txt from pyproject.toml
	$(UV) pip compile --quiet -p 3.11 --custom-compile-command "make lock" pyproject.toml -o requirements/runtime.txt
	$(UV) pip compile --quiet -p 3.11 --custom-compile-command "make lock" pyproject.toml --extra dev -o requirements/dev.txt

# The benchmark (minutes; not part of `make test` or CI). MLServer lives in its own virtualenv,
# with the model's libraries pinned to the service's lock so that it loads the same model.joblib.
MLSERVER_VENV := var/mlserver-venv
MODEL_LIBS := '^(scikit-learn|numpy|scipy|pandas|joblib)=='
BENCH_ARGS ?=

$(MLSERVER_VENV)/.installed: loadtests/mlserver-requirements.txt requirements/runtime.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	grep -E $(MODEL_LIBS) requirements/runtime.txt > $(MLSERVER_VENV)/constraints.txt
	$(MLSERVER_VENV)/bin/pip install --quiet --disable-pip-version-check \
		-r loadtests/mlserver-requirements.txt -c $(MLSERVER_VENV)/constraints.txt
	touch $@

bench: model $(MLSERVER_VENV)/.installed ## side-by-side benchmark into loadtests/results/ (BENCH_ARGS=...)
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y --no-install-recommends wrk; }
	$(BIN)/python -m loadtests.bench --mlserver $(MLSERVER_VENV)/bin/mlserver $(BENCH_ARGS)

clean: ## remove the virtualenv and local state (not the model store)
	rm -rf $(VENV) var .pytest_cache .ruff_cache
