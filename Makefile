# lepton: the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
LEPTON := $(VENV)/bin/lepton
PYTEST_ARGS ?=

# Pipeline overrides for `make pipeline-run`, e.g. `make pipeline-run EPOCHS=3 DATA=s3://bucket/raw/`.
DATA ?=
EPOCHS ?=
NPROC ?=
THRESHOLD ?=

.PHONY: help setup test test-fast lint format services-up services-down services-status \
        pipeline-run bench clean clean-state infra-validate infra-deploy image

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

setup: $(PY) ## create .venv (the project, pinned: constraints.txt) and the step environment
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	@# the endpoint's JSON pixel reader (C, infra/image/native); without a C compiler the
	@# endpoint takes its pure path (same answers, slower)
	$(PY) -m pip install --no-deps --force-reinstall ./infra/image/native || \
	  echo "warning: lepton-native not built (no C compiler?): JSON pixel bodies take the slower path"
	@rm -rf infra/image/native/build infra/image/native/*.egg-info
	@# the local runner's step environment: infra/image/requirements.txt alone, built once
	$(LEPTON) pipeline environment
	@$(PY) -c "from importlib.metadata import version as v; print('installed: ' + ', '.join(p + ' ' + v(p) for p in ('sagemaker', 's3fs', 'torch', 'lightning', 'mlflow')))"

# test files run on this many processes, each with its own local services (0: serially)
TEST_WORKERS ?= 2
test: ## run the whole tiered suite (unit, integration, e2e incl. a real local pipeline run)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: ## unit tests only
	$(PY) -m pytest tests/unit -m 'not slow' $(PYTEST_ARGS)

lint: ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

services-up: ## start local S3 (SeaweedFS) and MLflow on 127.0.0.1 (idempotent)
	$(LEPTON) services up

services-down: ## stop local services and the local endpoint (data is kept)
	$(LEPTON) services down

services-status: ## show local services and their health
	$(LEPTON) services status

pipeline-run: ## run the whole pipeline locally (DATA=, EPOCHS=, NPROC=, THRESHOLD=, ARGS="any flags")
	$(LEPTON) pipeline run $(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	  $(if $(NPROC),--nproc $(NPROC)) $(if $(THRESHOLD),--accuracy-threshold $(THRESHOLD)) $(ARGS)

infra-validate: ## cfn-lint + checkov (zero failed checks) on infra/template.yaml
	$(VENV)/bin/cfn-lint infra/template.yaml
	@# checkov pins an old boto3 that would break s3fs, so it lives in its own venv.
	@test -x .venv-checkov/bin/checkov || { $(PYTHON) -m venv .venv-checkov && .venv-checkov/bin/pip install --quiet checkov==3.3.30; }
	.venv-checkov/bin/checkov -f infra/template.yaml --framework cloudformation --quiet --compact --skip-download

infra-deploy: ## deploy the stack to the current AWS account: PARAMS="GitHubOwner=acme GitHubRepo=lepton" [STACK=lepton]
	LEPTON_MODE=aws $(LEPTON) infra deploy --stack $(or $(STACK),lepton) $(foreach p,$(PARAMS),--parameter $(p))

image: ## build the pipeline's container image in the stack's CodeBuild: [FLAVOUR=gpu|cpu] [DOCKER=1: local engine] [STACK=lepton]
	LEPTON_MODE=aws $(LEPTON) image build --stack $(or $(STACK),lepton) $(if $(FLAVOUR),--flavour $(FLAVOUR)) $(if $(DOCKER),--docker)

bench: ## run the side-by-side benchmarks (prints JSON)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## remove caches and build output (keeps .venv and .lepton)
	rm -rf .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

clean-state: services-down ## stop services and DELETE all local state (.lepton: S3 data, MLflow db)
	rm -rf $${LEPTON_STATE_DIR:-.lepton}
