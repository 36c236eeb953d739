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

.PHONY: help setup run test test-rust test-python bench lint proto proto-check loadtest topology clean

help:
	@echo "make run        set up, migrate the SQLite database, bootstrap a demo org, serve (codes on the console)"
	@echo "make test       cargo test, then pytest (PostgreSQL/Redis suites need the local servers)"
	@echo "make bench      benchmarks; each prints its ratio against a baseline measured in the same run"
	@echo "make loadtest   the national_peak Locust scenario end to end; report under reports/"
	@echo "make lint       cargo fmt --check, clippy -D warnings, ruff, mypy, stubtest, buf lint"
	@echo "make proto      regenerate authsvc/v1 from proto/"
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

test: test-rust proto-check test-python

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
	$(VENV)/bin/ruff check authsvc tests bench loadtests
	$(VENV)/bin/ruff format --check authsvc tests bench loadtests
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest authsvc._otp_core
	[ tools/node_modules/.package-lock.json -nt tools/package-lock.json ] || npm ci --prefix tools --no-audit --no-fund --loglevel=error && tools/node_modules/.bin/buf lint proto

proto: $(DEPS_STAMP)
	$(PY) scripts/gen_proto.py --out .

# The committed stubs must be exactly what proto/ generates.
proto-check: $(DEPS_STAMP)
	$(PY) scripts/gen_proto.py --check

clean:
	rm -rf $(VENV) target authsvc/*.so
