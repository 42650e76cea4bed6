# Every target creates/reuses .venv and installs requirements.txt on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SANDBOX_PORT ?= 8765
#: When make started (before any install), so `make demo` can report the install time apart.
MAKE_STARTED := $(shell date +%s.%N)
FAULTS ?=
CONF ?=
RESET ?=
DAG ?=
#: GitHub's GHES REST description for the contract tests (npm package, installed under build/).
OCTOKIT_OPENAPI_VERSION := 23.0.2
OCTOKIT_DIR := build/octokit
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)

.PHONY: venv test-deps test test-fast demo sandbox scenario lint stack-test bench clean

$(BIN)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

venv: $(BIN)/.installed

$(BIN)/.installed-test: $(BIN)/.installed requirements-test.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	@touch $@

$(OCTOKIT_DIR)/.installed-$(OCTOKIT_OPENAPI_VERSION):
	@command -v npm >/dev/null || { echo "need npm (node) on PATH for the GitHub contract tests"; exit 1; }
	mkdir -p $(OCTOKIT_DIR)
	npm install --prefix $(OCTOKIT_DIR) --no-audit --no-fund --no-save --loglevel=error @octokit/openapi@$(OCTOKIT_OPENAPI_VERSION)
	@touch $@

# Test-only Python packages (requirements-test.txt) and GitHub's API description for tests/contracts.
test-deps: $(BIN)/.installed-test $(OCTOKIT_DIR)/.installed-$(OCTOKIT_OPENAPI_VERSION)

#: Scenarios mostly wait on the sandbox's compressed clocks (the whole suite keeps about one of the two
#: cores busy), so four xdist workers share two cores well.
#: ``--dist worksteal``: a worker that runs out takes half of a busy worker's queue. With xdist's default
#: (``load``) one worker once ran the last 5+ minutes of fault-matrix scenarios alone while three idled
#: (the lane: 26 min in make test; alone, 15+ min against 11 min 23 s with worksteal).
#: The real-scheduler and status-page tests each start Airflow components over one home or database:
#: they run in lanes of their own beside the workers: the live tests (LIVE_WORKERS xdist workers, each
#: with its own stack, sandbox and database, one test at a time on each), and the production-shaped
#: stack plus the status page (one test at a time, homes of their own).
TEST_WORKERS ?= 4
LIVE_WORKERS ?= 2
LIVE_TESTS := tests/live
SERIAL_TESTS := tests/stack tests/status_page
FAST_TESTS := tests/unit tests/dags tests/hooks tests/sandbox tests/contracts tests/test_compose.py

#: Under make test a contract test whose publisher description is missing fails instead of skipping.
test: export ROLLOUT_REQUIRE_CONTRACTS = 1
test: venv test-deps lint
	@mkdir -p build; rm -f build/junit-*.xml
	@ROLLOUT_TEST_LANE=live $(BIN)/python -m pytest -q -p no:cacheprovider -n $(LIVE_WORKERS) --dist worksteal --durations=10 \
		--junitxml=build/junit-live.xml $(LIVE_TESTS) > build/test-live.log 2>&1 & live=$$!; \
	ROLLOUT_TEST_LANE=serial $(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 \
		--junitxml=build/junit-serial.xml $(SERIAL_TESTS) > build/test-serial.log 2>&1 & serial=$$!; \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=10 --junitxml=build/junit-parallel.xml \
		$(addprefix --ignore=,$(LIVE_TESTS) $(SERIAL_TESTS)) tests; parallel_rc=$$?; \
	wait $$live; live_rc=$$?; wait $$serial; serial_rc=$$?; \
	echo; echo "== real-scheduler lane (build/test-live.log) =="; cat build/test-live.log; \
	echo; echo "== stack and status-page lane (build/test-serial.log) =="; cat build/test-serial.log; \
	$(BIN)/python -m tests.harness.junit_summary build/junit-*.xml; \
	test $$parallel_rc -eq 0 -a $$live_rc -eq 0 -a $$serial_rc -eq 0

# The inner loop: unit, DAG integrity, hooks, sandbox and contract tests; no whole rollouts.
test-fast: venv test-deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=10 $(FAST_TESTS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff check --select AIR3 dags plugins

sandbox: venv
	SANDBOX_PORT=$(SANDBOX_PORT) $(BIN)/python -m include.sandbox

scenario: venv
	$(BIN)/python -m tests.harness.scenario --faults "$(FAULTS)" --conf '$(CONF)' --reset '$(RESET)' --dag '$(DAG)' \
		--port $(SANDBOX_PORT)

demo: venv
	DEMO_MAKE_STARTED=$(MAKE_STARTED) $(BIN)/python -m tests.harness.demo --port $(SANDBOX_PORT)

stack-test: venv
	$(BIN)/python -m pytest -q tests/stack

bench: venv
	$(BIN)/python -m tests.bench

clean:
	rm -rf build airflow_home .pytest_cache
