# Quick start: `make demo` (build the index on the embedded default and serve the UI and the page)
# and `make test`. Both create .venv on first use and are fast when nothing changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a GPU machine sets e.g. TORCH_SPEC='torch==2.13.0' with its CUDA index.
TORCH_SPEC ?= torch==2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.dagster
HOST ?= 127.0.0.1
SERVE ?= 1
SAMPLE ?= 0
PYTEST_ARGS ?=

.PHONY: install demo test validate clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,scale,bench]'
	@touch $@

demo: install
	@HOST=$(HOST) SERVE=$(SERVE) SAMPLE=$(SAMPLE) VENV=$(VENV) bash scripts/demo.sh

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

validate: install
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

clean:
	rm -rf $(VENV) .pytest_cache
