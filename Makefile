# Strata: `make run` sets up and runs the whole stack on this machine (kvengine up; MODEL=
# a checkpoint folder, else the tiny built-in model; PORT= the HTTP port, else 8000);
# `make test` sets up and runs the whole suite (lint, format check, type check, tests).
# Both create .venv on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test bench proto clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

MODEL ?=
PORT ?=

run: setup
	$(BIN)/kvengine up $(if $(MODEL),--model $(MODEL),) $(if $(PORT),--port $(PORT),)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

proto: setup
	$(BIN)/python scripts/gen_proto.py

bench: setup
	$(BIN)/python -m bench.hashing --quick --json bench/results/hashing.json
	$(BIN)/python -m bench.tiers --quick --json bench/results/tiers.json
	$(BIN)/python -m bench.hitrate --quick --json bench/results/hitrate.json
	$(BIN)/python -m bench.service --quick --json bench/results/service.json
	$(BIN)/python -m bench.transfer --quick --json bench/results/transfer.json
	$(BIN)/python -m bench.engine --quick --json bench/results/engine.json
	$(BIN)/python -m bench.router --quick --json bench/results/router.json
	$(BIN)/python -m bench.chaos --quick --json bench/results/chaos.json --png bench/results/chaos.png

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench/results
