# The README's two commands are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: setup demo test test-fast test-unit bench lint schemas clean services system-packages

setup: $(STAMP) services

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# What the local stack and the tests need from the system: PostgreSQL server, kcat, promtool
# (prometheus, checks /metrics), chromium (renders /dashboard headless), Java 17+ (the broker)
# and Maven (fetches the Kafka jars once). Missing ones are installed from Debian's packages
# when we may (root, or password-less sudo); else the command to run is printed. Then the
# Kafka jars come from Maven Central (cached).
services: $(STAMP) system-packages
	$(BIN)/python -m streams.infra.prepare

system-packages:
	@missing="$$(sh deploy/setup/missing-packages.sh)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "please install: $$missing (apt-get install -y $$missing)"; exit 1; fi; \
	  echo "installing $$missing from Debian's packages"; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	    || { echo "apt-get could not install: $$missing"; exit 1; }; \
	  still="$$(sh deploy/setup/missing-packages.sh)"; \
	  if [ -n "$$still" ]; then echo "still missing after apt-get: $$still"; exit 1; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m schemas.export --check
	$(BIN)/python -m streams.config --check README.md

# Three sessions side by side, each with its own broker and database: most tests wait on
# brokers, rebalances and outages rather than the CPU (one session left two cores 75-90 % idle).
TEST_PROCESSES ?= 3

test: setup lint
	$(BIN)/python -m pytest -q --durations=15 -n $(TEST_PROCESSES) --dist worksteal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Pure logic only: no broker, no database (tests/unit); tests/integration needs both.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

demo: setup
	$(BIN)/omnistream demo

# The peer in the metrics benchmark (Quix Streams) lives in an environment of its own: it pins
# its own pydantic, and users who only run the pipeline never install it.
.venv-bench/.installed:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install -q "quixstreams[postgresql]==3.28.1" \
	  || echo "Quix Streams could not be installed: the metrics bench runs without its peer"
	touch $@

bench: setup .venv-bench/.installed
	$(BIN)/omnistream bench $(BENCH_ARGS)

schemas: $(STAMP)
	$(BIN)/python -m schemas.export

clean:
	-$(BIN)/omnistream infra down
	rm -rf $(VENV) .omnistream .pytest_cache
