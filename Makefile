# shoprank — make targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= default
DATA ?= synthetic
OVERRIDES ?= {}
RUNS ?= runs
RUNNER ?= subprocess
export PYTHONHASHSEED := 0

.PHONY: help venv run test test-unit test-integration lint compile bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[pipeline,serving,savedmodel,deploy,dev]"
	$(VENV)/bin/pip check
	@touch $@

venv: $(VENV)/.installed ## create the virtualenv with the pinned dependencies

run: venv ## run the whole pipeline locally via kfp.local (SCALE=tiny|small|default, DATA=synthetic|DIR, RUNNER=subprocess|container)
	$(PY) -m pipelines.run_local --preset $(SCALE) --data '$(DATA)' --overrides '$(OVERRIDES)' --runs-dir $(RUNS) \
		--runner '$(RUNNER)' --component-image '$(BUILD_COMPONENT_IMAGE)' --container-tool '$(CONTAINER_TOOL)'

test: venv ## unit tests, golden compile test, manifest tests and the tiny end-to-end pipeline run
	$(PY) -m pytest

test-unit: venv ## only the fast tests (no pipeline run)
	$(PY) -m pytest -m "not integration"

test-integration: venv ## only the end-to-end kfp.local pipeline runs
	$(PY) -m pytest -m integration

lint: venv ## ruff, and the import rules of the library by stage (import-linter contracts in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# The golden file is compiled with the default image name; with COMPONENT_IMAGE set, the pipeline for that image
# is written to build/ instead (what `make deploy` uploads; the golden file stays as it is).
compile: venv ## compile the pipeline to pipelines/compiled/shoprank_pipeline.yaml (COMPONENT_IMAGE=...: to build/)
	@if [ -n "$(COMPONENT_IMAGE)" ]; then \
	  SHOPRANK_COMPONENT_IMAGE='$(COMPONENT_IMAGE)' $(PY) -m pipelines.compile build/shoprank_pipeline.yaml; \
	else $(PY) -m pipelines.compile; fi

bench: venv ## pipeline benchmark: quality, size, latency, stage wall time and peak memory, scaling
	$(PY) -m benchmarks.bench_pipeline --runs-dir $(RUNS)/bench

# Serving (make serve, make bench-serve) and deployment (make deploy, undeploy, images, kind-up) targets.
-include mk/*.mk

clean: ## remove runs and caches (keeps the virtualenv)
	rm -rf $(RUNS) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
