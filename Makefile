# phg: `make demo` runs everything locally; `make test` runs the whole test suite.
# Both set up what they need first: a Python venv in $(VENV) and the npm test peers in peers/.
# On another interpreter (as .ci/run does): make test PYTHON=python3.13 VENV=.venv-3.13
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The suite's workers (pytest-xdist; tests/conftest.py says what stays together): its tests mostly wait on
# peers, subprocesses and timers, so 4 workers on 2 cores; TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 4

.PHONY: setup demo test lint bench browser nats

setup: $(VENV)/.installed peers/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

peers/node_modules/.installed: peers/package.json peers/package-lock.json
	npm ci --prefix peers --no-audit --no-fund --loglevel=error
	touch $@

# The status page's browser test (tests/test_service_page_browser.py): Debian's chromium and its driver,
# installed with apt-get when missing (as root: CI runs as root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; }

# The hub tests (tests/test_hub_*.py) start their own three-node JetStream cluster: Debian's nats-server,
# installed with apt-get when missing (as root: CI runs as root).
nats:
	@command -v nats-server >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nats-server; }

demo: setup
	$(BIN)/phg demo

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

bench: setup
	$(BIN)/python bench/run.py
