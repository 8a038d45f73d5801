# Every target bootstraps its own virtualenv: nothing has to be installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?=
HOST   ?= 127.0.0.1
PORT   ?= 8080
PYTEST_ARGS ?=

.PHONY: run test test-fast lint bench clean lock redis-server promtool

# The virtualenv holds exactly uv.lock (dev tools included; the project itself editable),
# installed by uv, pinned here (the Dockerfile pins the same) and bootstrapped with the venv's
# pip. uv reads no pip configuration: it takes the lock's files from PyPI, trusting the
# system's CA store, and never downloads a Python: the venv's python3 is the one.
UV_VERSION := 0.13.9
UV := $(VENV)/uv-$(UV_VERSION)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
export UV_SYSTEM_CERTS := 1

# Installs Debian's redis-server when it is missing (as root with apt-get), else says what to do.
redis-server:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server \
	  >/dev/null; } || { echo "this needs redis-server (apt-get install redis-server)"; exit 1; }

# promtool (Prometheus's rule checker: tests/test_deploy.py runs the alerts' unit tests with it),
# when missing: taken out of Debian's prometheus package into the virtualenv (installing the
# package would also install and start a Prometheus server). `apt-get download` needs no root;
# the package lists are refreshed first when run as root.
promtool: $(STAMP)
	@command -v promtool >/dev/null || [ -x $(BIN)/promtool ] || { command -v apt-get >/dev/null \
	  && { [ "$$(id -u)" != 0 ] || apt-get update -qq; } && tmp=$$(mktemp -d) \
	  && trap 'rm -rf "$$tmp" $(BIN)/promtool.part' EXIT \
	  && { [ "$$(id -u)" != 0 ] || chown _apt "$$tmp" 2>/dev/null || true; } \
	  && (cd "$$tmp" && apt-get download -qq prometheus >/dev/null) \
	  && dpkg-deb --fsys-tarfile "$$tmp"/prometheus_*.deb | tar -xO ./usr/bin/promtool \
	  > $(BIN)/promtool.part && chmod +x $(BIN)/promtool.part \
	  && mv $(BIN)/promtool.part $(BIN)/promtool; } \
	  || { echo "the tests need promtool: put it on PATH (Prometheus's release tarball has it)"; \
	  exit 1; }

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --target $(VENV)/uv-$(UV_VERSION) \
	  uv==$(UV_VERSION)

# --locked: a pyproject.toml that uv.lock no longer satisfies fails here (run `make lock`)
# instead of installing something else. Packages the lock does not list are removed (but the
# venv's own pip and setuptools); a changed lock or pyproject.toml syncs again.
$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --extra dev
	touch $(STAMP)

## lock: re-resolve uv.lock to the newest versions pyproject.toml allows (then run make test)
lock: $(UV)
	$(UV) lock --upgrade

## run: serve the gateway on $(HOST):$(PORT); without CONFIG=FILE it starts the embedded upstream,
## a private redis-server and prints a demo key
run: $(STAMP) redis-server
	$(BIN)/gateway serve $(if $(CONFIG),--config $(CONFIG)) --host $(HOST) --port $(PORT)

## lint: ruff and mypy strict
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: lint, then the whole test suite
test: lint redis-server promtool
	$(BIN)/pytest -q $(PYTEST_ARGS)

## test-fast: the tests that start no process (no gateway, upstream, redis-server or CLI), in
## seconds; no lint
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not processes" $(PYTEST_ARGS)

## bench: the gateway against a direct call to the same upstream, side by side (installs wrk as root)
bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
	  || { echo "make bench needs wrk (apt-get install wrk)"; exit 1; }
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
