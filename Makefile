# The README's commands. Every target sets up what it needs by itself on a fresh clone
# (virtualenv, pinned Python dependencies, release build of the Rust extension) and is idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

RUST_SRC := Cargo.toml Cargo.lock otp_core/Cargo.toml $(shell find otp_core/src -name '*.rs' 2>/dev/null)
PROTO_SRC := $(shell find proto -name '*.proto' 2>/dev/null)
DEPS_STAMP := $(VENV)/.deps-stamp
EXT_STAMP := $(VENV)/.ext-stamp
# npm ci writes node_modules/.package-lock.json: newer than the committed lock once installed.
TOOLS_STAMP := tools/node_modules/.package-lock.json
TS_STAMP := examples/typescript/node_modules/.package-lock.json
NPM_CI := npm ci --no-audit --no-fund --loglevel=error --prefix
BUF := tools/node_modules/.bin/buf
API_BASELINE := proto/released/authsvc-v1.binpb

.PHONY: help setup run test test-rust test-python bench lint proto proto-check api-check examples loadtest topology clean

help:
	@echo "make run        set up, migrate the SQLite database, bootstrap a demo org, serve (codes on the console)"
	@echo "make test       cargo test, stub drift, buf breaking, the example clients, then pytest (PostgreSQL/Redis suites need the local servers)"
	@echo "make bench      benchmarks; each prints its ratio against a baseline measured in the same run"
	@echo "make loadtest   the national_peak Locust scenario end to end; report under reports/"
	@echo "make lint       cargo fmt --check, clippy -D warnings, ruff, mypy, stubtest, buf lint"
	@echo "make proto      regenerate authsvc/v1 and docs/api.md from proto/, docs/settings.md from config.py"
	@echo "make examples   generate the TypeScript and Rust stubs (gen/, never committed), build the examples/ clients"
	@echo "make topology   3 replicas + 2 dispatchers behind HAProxy on PostgreSQL and Redis, until Ctrl-C"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# maturin develop puts the native module next to authsvc/ and installs the package editable.
$(EXT_STAMP): $(DEPS_STAMP) $(RUST_SRC) pyproject.toml
	$(VENV)/bin/maturin develop --release --locked -q
	touch $@

setup: $(EXT_STAMP)

run: setup
	$(PY) -m authsvc dev-run

test: test-rust proto-check api-check examples test-python

test-rust:
	cargo test --locked --workspace -q

test-python: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/otp_core.py
	$(PY) bench/service.py

# Starts its own server (SQLite; PostgreSQL + Redis with AUTHSVC_LOADTEST_DATABASE_URL and
# AUTHSVC_LOADTEST_REDIS_URL), seeds, runs Locust headless (bounded), writes reports/.
# Options: make loadtest LOADTEST_ARGS="--users 200 --peak 120 --workers 2 --processes 2"
loadtest: setup
	$(PY) -m loadtests.run $(LOADTEST_ARGS)

# HAProxy comes from Debian's package, installed once when missing (as root).
topology: setup
	@[ -x /usr/sbin/haproxy ] || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy; } \
		|| { echo "install HAProxy: sudo apt-get install haproxy"; exit 1; }
	$(PY) scripts/run_topology.py

lint: setup
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked --workspace --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check authsvc tests bench loadtests examples/python
	$(VENV)/bin/ruff format --check authsvc tests bench loadtests examples/python
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest authsvc._otp_core
	$(MAKE) -s $(TOOLS_STAMP) && $(BUF) lint proto

proto: $(DEPS_STAMP)
	$(PY) scripts/gen_proto.py --out .
	$(PY) scripts/gen_api_reference.py
	$(PY) scripts/gen_settings_table.py

# The committed stubs, API reference (docs/api.md) and settings table (docs/settings.md) must be
# exactly what proto/ and authsvc/config.py generate.
proto-check: $(DEPS_STAMP)
	$(PY) scripts/gen_proto.py --check
	$(PY) scripts/gen_api_reference.py --check
	$(PY) scripts/gen_settings_table.py --check

$(TOOLS_STAMP): tools/package.json tools/package-lock.json
	$(NPM_CI) tools
	touch $@

$(TS_STAMP): examples/typescript/package.json examples/typescript/package-lock.json
	$(NPM_CI) examples/typescript
	touch $@

# The API never breaks its callers by accident: buf breaking (category FILE, proto/buf.yaml)
# against the committed image of the last released API. A deliberate break moves the API to a
# new package (authsvc.v2) and replaces the image in the same commit:
#   $(BUF) build proto --exclude-source-info -o $(API_BASELINE)
api-check: $(TOOLS_STAMP)
	$(BUF) breaking proto --against $(API_BASELINE)

# The stubs of the three example clients, generated fresh on every run, then the clients built;
# tests/examples runs them against a real server. google/rpc/{status,error_details}.proto come
# from the pinned googleapis-common-protos in the venv (copied, never committed).
examples: $(DEPS_STAMP) $(TOOLS_STAMP) $(TS_STAMP)
	rm -rf gen && mkdir -p gen/third_party/google/rpc
	cp "$$($(PY) -c 'import pathlib, google.rpc.status_pb2 as m; print(pathlib.Path(m.__file__).parent)')"/{status,error_details}.proto gen/third_party/google/rpc/
	$(BUF) generate
	@# buf's Python stubs must be byte for byte the committed ones that examples/python imports.
	diff -r -x __init__.py -x __pycache__ gen/python/authsvc/v1 authsvc/v1
	examples/typescript/node_modules/.bin/tsc -p examples/typescript
	cargo build --locked -q -p authsvc-example-client

clean:
	rm -rf $(VENV) target authsvc/*.so gen examples/typescript/{gen,dist,node_modules} tools/node_modules
