# The two README commands: `make demo` and `make test`. Both set up
# everything they need first (venv, packages, Delta and Kafka jars, redis-server).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps jars demo test test-fast lint format bench feast-venv schema clean

setup: $(STAMP) system-deps jars

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Debian packages: redis-server for the online store, maven to fetch the Delta and Kafka jars.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Delta jars into .cache/jars, Kafka's broker and Spark's Kafka source into .cache/kafka (once, from Maven
# Central: common/runtime/jars.py), and .cache/loom-spark.conf for spark-submit.
jars: $(STAMP) system-deps
	@$(PY) -m common.runtime.spark

demo: setup
	$(VENV)/bin/loom demo

# The full suite on two pytest-xdist workers (2 cores): the tests on the churn lake on one, every other test
# file on whichever worker is free (groups: tests/conftest.py).
test: setup
	$(PY) -m pytest -n 2 --dist loadgroup

# The inner loop: every test without Spark (in-process or spark-submit/`loom` subprocesses) and
# without the long end-to-end ones, on two pytest-xdist workers (each its own LOOM_HOME, redis-server
# and tmp folders); under a minute. `make test` stays the full suite.
test-fast: $(STAMP) system-deps
	$(PY) -m pytest -n 2 -m "not spark and not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The serving bench's peer: Feast in a virtualenv of its own (never in .venv), made once.
FEAST_VENV := .cache/feast-venv
FEAST_PIN  := feast[redis]==0.67.0

feast-venv: $(FEAST_VENV)/.installed

$(FEAST_VENV)/.installed:
	$(PYTHON) -m venv $(FEAST_VENV)
	$(FEAST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FEAST_VENV)/bin/python -m pip install --quiet '$(FEAST_PIN)'
	touch $@

bench: setup feast-venv
	$(PY) -m bench

schema: $(STAMP)
	$(VENV)/bin/loom schema --write

clean:
	rm -rf .loom spark-warehouse metastore_db derby.log .pytest_cache
