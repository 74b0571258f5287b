# The two commands a new user needs: `make demo` (see it work) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install upgrade test-latest demo test lint fmt broker redis contract-tools schemas alerts clean

# Every install comes from uv.lock (exact versions with hashes): `make install`, `make test`,
# .ci/run and deploy/Dockerfile run the same code. uv itself is pinned here and lives in
# .tools/, outside the project's environment, so a sync never removes it.
UV_VERSION := 0.13.10
UV := .tools/bin/uv
# Never fetch an interpreter: the machine's python3 is the one every target uses.
export UV_PYTHON_DOWNLOADS := never

install: $(STAMP)

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python $(PYTHON) --extra dev --extra otel --extra docs
	touch $(STAMP)

# Move the lock to the newest versions pyproject.toml's ranges allow, on purpose: run it
# when `make test-latest` is green (or to take a fix), then `make test` and commit uv.lock.
upgrade: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)
	$(UV) sync --locked --python $(PYTHON) --extra dev --extra otel --extra docs
	touch $(STAMP)

# The suite on the newest releases the ranges allow, in its own environment (.venv-latest),
# so an upstream change shows up here before a user's install meets it. Not part of .ci/run:
# an upstream release must not block a submission.
LATEST := .venv-latest
test-latest: broker redis contract-tools | $(UV)
	rm -rf $(LATEST)
	$(UV) venv --quiet --python $(PYTHON) $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --resolution highest -e '.[dev,otel,docs]'
	mkdir -p build && $(UV) pip freeze --python $(LATEST)/bin/python > build/latest-versions.txt
	$(LATEST)/bin/pytest $(PYTEST_ARGS)

broker:
	@scripts/ensure-broker.sh

# The progress record's tests (WORKER_STATE_REDIS_URL) need a Redis on 127.0.0.1:6379.
redis:
	@scripts/ensure-redis.sh

# promtool and the AsyncAPI parser, which tests/test_alerts.py and tests/test_contract.py run.
contract-tools:
	@scripts/ensure-contract-tools.sh

# Regenerate the derived files (tests fail while they are out of date): the input event's
# JSON Schema from worker/models.py, the PrometheusRule from deploy/prometheus/alerts.yaml.
schemas: install
	$(BIN)/python scripts/generate.py schemas

alerts: install
	$(BIN)/python scripts/generate.py alerts

# The documentation site (mkdocs.yml, pages under docs/) into build/site; --strict turns every
# warning (a broken link or anchor, a page missing from the nav) into a failure. It checks,
# never rewrites, the reference pages: `make reference` regenerates them from the code
# (settings, command line, metrics, alert rules), and tests/test_docs.py fails while they differ.
# NO_MKDOCS_2_WARNING: Material's end-of-life banner (May 2027) is news, not a build problem.
.PHONY: docs reference
reference: install
	$(BIN)/python scripts/generate.py docs

docs: install
	$(BIN)/python scripts/generate.py docs --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

demo: install broker
	$(BIN)/python scripts/demo.py

test: install broker redis contract-tools
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(UV) lock --check --python $(PYTHON)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(LATEST) .tools tools/asyncapi/node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info

# The fault-injection suite with its figures recorded, rendered into docs/RELIABILITY.md.
RELIABILITY_RESULTS := build/reliability.json
.PHONY: reliability
# It includes the long form of the cluster scenarios (CLUSTER_FULL=1, see `make cluster`).
reliability: install broker redis
	rm -f $(RELIABILITY_RESULTS)
	CLUSTER_FULL=1 RELIABILITY_EVENTS=2000 RELIABILITY_REPORT=$(RELIABILITY_RESULTS) $(BIN)/pytest tests/reliability $(PYTEST_ARGS); \
	status=$$?; \
	$(BIN)/python -m tests.reliability.report $(RELIABILITY_RESULTS) docs/RELIABILITY.md; \
	exit $$status

# The worker against its peers and a raw ceiling, written to docs/BENCHMARKS.md and
# docs/benchmarks.png (bench/run.py, about 30 minutes; it starts its own nginx and
# installs it with apt-get when missing). `make bench BENCH_ARGS=--quick`: a 2-minute smoke run.
BENCH_STAMP := $(VENV)/.bench-installed
.PHONY: bench
$(BENCH_STAMP): $(STAMP)
	$(UV) sync --locked --python $(PYTHON) --extra dev --extra otel --extra docs --extra bench
	touch $(BENCH_STAMP)

bench: install broker $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# A node of a local 3-node RabbitMQ cluster (scripts/cluster.sh, ports 5681-5683) stopped
# under a 3,000-ticket backlog: the worker's node, then the work queue's leader. The long
# form of what `make test` runs short; `make reliability` records it in docs/RELIABILITY.md.
.PHONY: cluster cluster-stop
cluster: install broker
	scripts/cluster.sh start
	CLUSTER_FULL=1 $(BIN)/pytest tests/reliability/test_cluster.py $(PYTEST_ARGS)

cluster-stop:
	scripts/cluster.sh stop

# Every feature at once under a seeded random fault schedule, reconciled by a ledger
# (tests/soak/, docs/guides/soak.md). `make soak MINUTES=60 SEED=1`: MINUTES of traffic
# (default 60) at RATE ticket messages a second (default 30) and SELLER_RATE seller events a
# second (default 5), FAULTS_PER_HOUR faults of each class an hour (default 6, at least one
# each), drawn from SEED (default 1). It starts (and afterwards stops, if it started it) the
# 3-node cluster, its own Redis, the emulator, a file server, two workers and two bridges,
# and appends its section to docs/RELIABILITY.md and its chart to docs/soak.png; exit 1 on
# any discrepancy.
# `make test` runs the short form (tests/soak/test_soak.py: 2 minutes of traffic, every
# fault class once, each held at most 4 s; about 4 minutes in all).
MINUTES ?= 60
SEED ?= 1
RATE ?= 30
SELLER_RATE ?= 5
FAULTS_PER_HOUR ?= 6
.PHONY: soak
soak: install broker $(BENCH_STAMP)
	$(BIN)/python -m tests.soak --minutes $(MINUTES) --seed $(SEED) --rate $(RATE) \
		--seller-rate $(SELLER_RATE) --per-hour $(FAULTS_PER_HOUR) --report $(SOAK_ARGS)
