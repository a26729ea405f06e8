# Entry points a newcomer types (see README). Each target creates .venv/ on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup demo test test-fast clean-demo

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The default pipeline on the demo params: offline, 2 cores.
demo: $(STAMP)
	$(BIN)/snakemake --cores all

# The whole test suite, slow (pipeline) tests included, as CI runs it.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf data/raw/demo data/interim/demo data/processed/demo reports/demo logs/demo .snakemake
