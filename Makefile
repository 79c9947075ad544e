# The README's two commands are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: setup demo test test-fast test-unit bench lint schemas clean services

setup: $(STAMP) services

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# Binaries the local stack and the tests need: PostgreSQL server, kcat, promtool (prometheus,
# checks /metrics) and chromium (renders /dashboard headless) from Debian's packages (when
# missing and we may install), the Kafka jars from Maven Central (cached).
services: $(STAMP)
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v kcat >/dev/null 2>&1 || missing="$$missing kcat"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install:$$missing (apt-get install -y$$missing)"; exit 1; fi; \
	fi
	$(BIN)/python -m streams.infra.prepare

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m schemas.export --check
	$(BIN)/python -m streams.config --check README.md

test: setup lint
	$(BIN)/python -m pytest -q

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
