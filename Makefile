# Set-up and checks. Every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
IDP := tests/idp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BROWSER_MODE ?= scripted
PYTEST_ARGS ?=
# e.g. make bench BENCH_ARGS=--json, or BENCH_ARGS="--quick", "--runs 40", "--skip daemon"
BENCH_ARGS ?=

.PHONY: test demo bench lint setup setup-python setup-demo setup-idp setup-system setup-node \
	setup-kubectl setup-browser setup-bench clean

test: setup setup-browser setup-bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The demo needs node (the provider), woci and the OCI CLI: the `demo` extra, not the `test` one.
demo: setup-node setup-demo setup-idp
	$(BIN)/python tests/sandbox/demo.py --browser $(BROWSER_MODE)

# Numbers only (never asserts timings). With BENCH_ARGS=--json stdout is one JSON object: the
# set-up's own output goes to stderr.
bench:
	@$(MAKE) --no-print-directory setup setup-bench >&2
	@$(BIN)/python tests/bench/bench.py $(BENCH_ARGS)

lint: setup-python
	$(BIN)/ruff check oci_upst_session_manager.py tests

setup: setup-system setup-python setup-idp

# The test extra includes the demo extra, so a venv set up for the tests serves the demo too.
setup-python: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed-demo

setup-demo: $(VENV)/.installed-demo
$(VENV)/.installed-demo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[demo]'
	touch $@

setup-idp: $(IDP)/node_modules/.installed
$(IDP)/node_modules/.installed: $(IDP)/package-lock.json $(IDP)/package.json
	cd $(IDP) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# node runs the test identity provider; kubectl is already on this kind of machine, and
# Debian's kubernetes-client would replace a newer one, so it is installed only when missing.
setup-system: setup-node setup-kubectl

setup-node:
	@command -v node >/dev/null && command -v npm >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }

setup-kubectl:
	@command -v kubectl >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq kubernetes-client; }

# A real headless browser for the end-to-end sign-in test (never `playwright install`).
setup-browser:
	@test -x /usr/bin/chromium || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# GNU time reads a child's own peak RSS (a child's ru_maxrss counts its Python parent's too).
setup-bench:
	@test -x /usr/bin/time || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq time; }

clean:
	rm -rf $(VENV) $(IDP)/node_modules .pytest_cache *.egg-info
