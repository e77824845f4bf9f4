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

.PHONY: help setup model serve test system-deps lint format lock proto dashboards clean image container-tools test-container bench overhead soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

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

# --durations: the slowest tests, so that a CI run that grows shows where its time went.
test: setup lint system-deps ## set up and run the test suite (the image's: make test-container)
	$(BIN)/pytest --durations=25

system-deps: ## install Prometheus, Alertmanager (promtool, amtool), the blackbox exporter and docker-compose if missing (Debian, as root)
	tests/apt-ensure.sh promtool:prometheus amtool:prometheus-alertmanager \
	    prometheus-blackbox-exporter:prometheus-blackbox-exporter docker-compose:docker-compose

CONTAINER_BACKEND ?= docker

# The image is tagged credit_risk_service:<version> (the bento's tag) and credit_risk_service:latest
# (what monitoring/compose.yaml runs); a -t replaces containerize's default tag, so both are given.
# The OCI labels (version, revision, source, created) come from container/oci_labels.py.
image: model ## build the bento and its OCI image, tagged <version> and latest (CONTAINER_BACKEND=docker|podman|buildah|...)
	set -eo pipefail; \
	bento=$$($(BIN)/bentoml build --output tag | tail -n 1); bento=$${bento#__tag__:}; \
	echo "built bento $$bento"; \
	found=$$($(BIN)/python container/oci_labels.py "$$bento"); \
	labels=(); while read -r label; do labels+=(--opt "$$label"); done <<< "$$found"; \
	$(BIN)/bentoml containerize --backend $(CONTAINER_BACKEND) "$${labels[@]}" \
	    -t "$$bento" -t credit_risk_service:latest "$$bento"

container-tools: ## install buildah, podman, runc and debootstrap if missing (Debian, as root)
	tests/apt-ensure.sh buildah:buildah podman:podman runc:runc debootstrap:debootstrap

test-container: setup container-tools ## build the image with buildah, run it with podman, test it
	$(BIN)/pytest -m container --durations=0

lint: setup ## ruff: lint and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: | $(UV) ## re-resolve requirements/*.txt from pyproject.toml
	$(UV) pip compile --quiet -p 3.11 --custom-compile-command "make lock" pyproject.toml -o requirements/runtime.txt
	$(UV) pip compile --quiet -p 3.11 --custom-compile-command "make lock" pyproject.toml --extra dev -o requirements/dev.txt

proto: setup ## regenerate the gRPC stubs in service/oip/generated from service/oip/proto
	$(BIN)/python -m service.oip.codegen

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
	tests/apt-ensure.sh wrk:wrk
	$(BIN)/python -m loadtests.bench --mlserver $(MLSERVER_VENV)/bin/mlserver $(BENCH_ARGS)

OVERHEAD_ARGS ?=
overhead: model ## what observability costs, side channel by side channel (OVERHEAD_ARGS=...)
	tests/apt-ensure.sh wrk:wrk
	$(BIN)/python -m loadtests.overhead $(OVERHEAD_ARGS)

SOAK_ARGS ?=
soak: model ## zero log loss at saturation, memory over a 10-minute soak (SOAK_ARGS=...)
	tests/apt-ensure.sh wrk:wrk
	$(BIN)/python -m loadtests.soak $(SOAK_ARGS)

dashboards: setup ## regenerate monitoring/grafana/dashboards/*.json from monitoring/dashboards
	$(BIN)/python -m monitoring.dashboards

clean: ## remove the virtualenv and local state (not the model store)
	rm -rf $(VENV) var .pytest_cache .ruff_cache
