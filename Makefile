# airflow-k3s front door: `make help`. The first target run creates .venv (uv, from uv.lock).
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make up VERBOSE=1`: every docker, compose and kubectl command a task runs is printed first.
ifdef VERBOSE
export AIRFLOW_K3S_VERBOSE := $(VERBOSE)
endif

$(VENV)/.synced: pyproject.toml uv.lock
	@test -x $(BIN)/uv || { echo "==> creating $(VENV)"; $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q uv==0.13.9; }
	@$(BIN)/uv sync -q --frozen
	@touch $@

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

.PHONY: up
up: $(VENV)/.synced ## Start the stack: secrets, build, healthy, worker image pushed
	$(BIN)/invoke up

.PHONY: down
down: $(VENV)/.synced ## Stop the stack, keep its data
	$(BIN)/invoke down

.PHONY: clean
clean: $(VENV)/.synced ## Delete the stack's containers, volumes and generated files
	$(BIN)/invoke clean

.PHONY: status
status: $(VENV)/.synced ## Services, their health and the worker pods
	$(BIN)/invoke status

.PHONY: demo
demo: $(VENV)/.synced ## Start the stack and run the demo DAG to success
	$(BIN)/invoke demo

.PHONY: test
test: $(VENV)/.synced ## Lint, unit, then integration, e2e and faults on a real stack (Docker)
	$(BIN)/nox -s lint unit integration e2e faults

.PHONY: lint
lint: $(VENV)/.synced ## ruff, mypy, yamllint, hadolint, shellcheck, k8s schemas
	$(BIN)/nox -s lint

.PHONY: unit
unit: $(VENV)/.synced ## Unit tests (no Docker)
	$(BIN)/nox -s unit

.PHONY: integration
integration: $(VENV)/.synced ## The stack's services for real (needs Docker)
	$(BIN)/nox -s integration

.PHONY: e2e
e2e: $(VENV)/.synced ## The demo and executor features as pods on the cluster (needs Docker)
	$(BIN)/nox -s e2e

.PHONY: faults
faults: $(VENV)/.synced ## Faults and bad input on a real stack (needs Docker)
	$(BIN)/nox -s faults

.PHONY: bench
bench: $(VENV)/.synced ## Measure on the cluster: up, tasks, scaling, CPU, edit loop (docs/benchmarks.md)
	$(BIN)/nox -s bench

.PHONY: doctor
doctor: $(VENV)/.synced ## Check Docker, compose, memory, disk, ports, privileged, pulls
	$(BIN)/invoke doctor
