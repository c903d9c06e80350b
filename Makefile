# Developer entry points. `make` alone lists the targets.
#
# Every target that runs project code depends on `venv`, which creates .venv and
# installs requirements-test.txt (which includes requirements.txt). The install
# is re-run only when one of the two requirements files is newer than the stamp
# file .venv/.installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test migrate clean

help: ## list the targets
	@echo "usage: make TARGET [PYTEST_ARGS='...'] [PYTHON=python3]"
	@echo
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install the pinned requirements (only when they changed)

$(STAMP): requirements.txt requirements-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

# $(call debian_package,COMMAND,PACKAGE,TARGET,WHAT WITHOUT IT): install Debian's PACKAGE when COMMAND is
# on neither PATH nor /usr/sbin, where we are root with apt-get; otherwise say what TARGET does without it.
define debian_package
	@command -v $(1) >/dev/null 2>&1 || test -x /usr/sbin/$(1) || { \
		if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "$(3): installing $(2)"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
		else \
			echo "$(3): $(2) is missing and cannot be installed (needs root and apt-get): $(4)" >&2; \
		fi; }
endef

run: venv ## run the whole stack locally behind one URL (private Redis and nginx, intake, api, workers, cron, emulator)
	$(call debian_package,nginx,nginx,run,two URLs and no front)
	@$(BIN)/python deploy/launch.py

TEST_WORKERS ?= 2

test: venv ## run the test suite in TEST_WORKERS processes; pass options with PYTEST_ARGS='-k webhook -x'
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

migrate: venv ## apply the database migrations to DATABASE_URL (default: var/captions.db)
	$(BIN)/python deploy/launch.py migrate

clean: ## remove .venv and caches (var/ with its data and secrets is kept)
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# More targets (bench, chaos, ...) go below this line. Make each depend on
# `venv`, add it to .PHONY, and give it a `## description` after the colon so
# that `make help` lists it.

.PHONY: bench
BENCH_ARGS ?=
bench: venv ## run the benchmark suite (bench/README.md); BENCH_ARGS='--quick' or '--only intake,drain'
	$(call debian_package,wrk,wrk,bench,no intake figures)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

.PHONY: chaos
CHAOS_ARGS ?=
chaos: venv ## kill workers, gunicorn workers and Redis at random under load, then check the ledger; CHAOS_ARGS='--quick'
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

.PHONY: fuzz
FUZZ_REQUESTS ?= 100000
ATHERIS_RUNS ?= 200000
fuzz: venv ## FUZZ_REQUESTS (100,000) hostile requests at every route, then drain; ATHERIS_RUNS coverage-guided webhook bodies (tests/test_fuzz.py); FUZZ_SEED=n repeats a run
	FUZZ_REQUESTS=$(FUZZ_REQUESTS) ATHERIS_RUNS=$(ATHERIS_RUNS) $(BIN)/python -m pytest -q -s --timeout 0 \
		"tests/test_fuzz.py::test_generated_requests[sqlite]" tests/test_fuzz.py::test_coverage_guided_webhook_bodies \
		$(PYTEST_ARGS)

.PHONY: bench-readers
READERS_ARGS ?=
bench-readers: venv ## readers at scale: stats, search, lists at 1,000,000 tasks beside 10,000, webhooks with 20 readers polling; READERS_ARGS='--tasks 10000000' or '--stores sqlite --reseed'
	$(BIN)/python -m bench.readers $(READERS_ARGS)

.PHONY: bench-exports
EXPORTS_ARGS ?=
bench-exports: venv ## exports at scale: CSV and NDJSON of 1,000,000 tasks, rows/s and the worker's memory; EXPORTS_ARGS='--tasks 100000'
	$(BIN)/python -m bench.exports $(EXPORTS_ARGS)

.PHONY: vendor-api-docs
SWAGGER_UI_VERSION ?= 5.35.0
API_DOCS := receiver/static/api-docs
vendor-api-docs: ## re-vendor the API reference page's Swagger UI (swagger-ui-dist@SWAGGER_UI_VERSION from npm, licences kept)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		(cd "$$tmp" && npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) >/dev/null && tar xzf swagger-ui-dist-*.tgz) && \
		for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE; do \
			cp "$$tmp/package/$$f" $(API_DOCS)/$$f; done && \
		echo "$(API_DOCS): swagger-ui-dist $(SWAGGER_UI_VERSION)"

.PHONY: vendor-uplot
UPLOT_VERSION ?= 1.6.32
UPLOT := receiver/static/vendor/uplot
vendor-uplot: ## re-vendor the dashboard's chart library (uplot@UPLOT_VERSION from npm: its ES module, CSS and licence)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		(cd "$$tmp" && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null && tar xzf uplot-*.tgz) && \
		mkdir -p $(UPLOT) && \
		for f in dist/uPlot.esm.js dist/uPlot.min.css LICENSE; do cp "$$tmp/package/$$f" $(UPLOT)/; done && \
		echo "$(UPLOT): uplot $(UPLOT_VERSION)"
