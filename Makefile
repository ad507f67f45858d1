# Quick start: `make demo` (build the index on the embedded default and serve the UI and the page)
# and `make test`. Both create .venv on first use and are fast when nothing changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a GPU machine sets e.g. TORCH_SPEC='torch==2.13.0' with its CUDA index.
TORCH_SPEC ?= torch==2.13.0
# INSTANCE=postgres: the Dagster instance on PostgreSQL (deploy/postgres/dagster.yaml, the database
# in DAGSTER_PG_URL), kept in .dagster-postgres; the default is the embedded SQLite one in .dagster.
INSTANCE ?= sqlite
ifeq ($(INSTANCE),postgres)
export DAGSTER_HOME ?= $(CURDIR)/.dagster-postgres
endif
export DAGSTER_HOME ?= $(CURDIR)/.dagster
HOST ?= 127.0.0.1
SERVE ?= 1
SAMPLE ?= 0
PYTEST_ARGS ?=
# pytest-xdist workers. 0 (the default, what CI runs) keeps the tests in this process; 2 takes about
# 0.6 of the time on two cores but is not yet the default: each of its two fresh-clone runs met one
# timing flake (docs/results/test-suite.md).
PYTEST_WORKERS ?= 0

.PHONY: install demo lint test validate clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,scale,bench]'
	@touch $@

demo: install
ifeq ($(INSTANCE),postgres)
	@test -n "$$DAGSTER_PG_URL" || { echo "make demo INSTANCE=postgres needs DAGSTER_PG_URL, e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/dagster (docs/scaling.md)"; exit 2; }
	@mkdir -p "$(DAGSTER_HOME)" && cp deploy/postgres/dagster.yaml "$(DAGSTER_HOME)/dagster.yaml"
endif
	@HOST=$(HOST) SERVE=$(SERVE) SAMPLE=$(SAMPLE) VENV=$(VENV) bash scripts/demo.sh

# Lint and format are checked before the tests, so CI refuses code ruff would change.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

validate: install
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

clean:
	rm -rf $(VENV) .pytest_cache
