# StyleShift developer commands. `make` (or `make help`) lists them.
# Everything runs inside .venv, created/updated by pip only (pip honours the machines' local torch wheels;
# torch and torchvision are pinned first so no other build is pulled in).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.styleshift-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
ARGS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv demo test bench lint clean distclean

help: ## Show this list of targets (coloured only on a terminal, and not with NO_COLOR set)
	@echo "usage: make <target>   (ARGS='key=value ...' for demo, PYTEST_ARGS='...' for test)"
	@if [ -t 1 ] && [ -z "$$NO_COLOR" ]; then on=$$'\033[36m'; off=$$'\033[0m'; else on=; off=; fi; \
	awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %s%-10s%s %s\n", on, $$1, off, $$2}' $(MAKEFILE_LIST)

# Re-runs when the dependency files change; on an up-to-date venv both pip calls are quick no-ops.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	@if [ ! -x "$(PY)" ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	$(PIP) install --disable-pip-version-check -q -c constraints.txt $(TORCH_PINS)
	$(PIP) install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	@touch $@

venv: $(STAMP) ## Create or update .venv (pinned by constraints.txt; reuses an existing one)

demo: $(STAMP) ## Train the offline demo (StyleGAN2 on the toy faces, CPU, a few minutes)
	$(PY) train.py configs/demo.yaml $(ARGS)

test: $(STAMP) ## Run the test suite offline with throw-away caches
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	env HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_DIR=$$tmp/wandb WANDB_CACHE_DIR=$$tmp/wandb-cache \
	    WANDB_CONFIG_DIR=$$tmp/wandb-config WANDB_DATA_DIR=$$tmp/wandb-data TORCH_HOME=$$tmp/torch \
	    STYLESHIFT_CACHE=$$tmp/styleshift \
	    $(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP) ## Run every benchmark in bench/ (prints tables)
	@for script in bench/*.py; do echo "== $$script"; HF_HUB_OFFLINE=1 $(PY) $$script || exit 1; done

lint: $(STAMP) ## Lint with ruff
	$(PY) -m ruff check .

clean: ## Remove caches and build artefacts (keeps .venv and runs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## Also remove .venv
	rm -rf $(VENV)
