# nodd: the two commands a new machine needs.
#   make demo   create .venv, install, run the main job on the built-in data
#   make test   same venv, run the test suite
# Anything that starts Ray or torch.distributed runs in a loopback-only network namespace when
# `unshare` works (root on Linux), because Ray binds every interface otherwise.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
NODD   := $(VENV)/bin/nodd
DEMO_DIR ?= runs/demo
# Loopback-only namespace when possible, plain shell otherwise (laptops without root).
ifeq ($(shell unshare -n true >/dev/null 2>&1 && echo yes),yes)
NETNS := unshare -n sh -c 'ip link set lo up && exec "$$0" "$$@"'
else
NETNS :=
endif

.PHONY: demo test install clean bench bench-prep bench-model

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# A CPU machine takes the local CPU build of torch; a GPU machine lets pip pick its CUDA build.
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet "torch==2.13.0"; fi
	@# megatron-core (2.6 MB, pure Python here) and DeepSpeed (built from its source package, no
	@# CUDA ops) so that both engines are tested everywhere
	$(PY) -m pip install --quiet -e ".[dev,megatron,deepspeed,tracking]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(NETNS) $(NODD) demo --out $(DEMO_DIR)

test: install
	$(NETNS) $(PY) -m pytest -q tests

bench: bench-prep bench-model

bench-prep: install
	$(NETNS) $(PY) bench/prep.py

bench-model: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/train_step.py

clean:
	rm -rf $(VENV) runs build *.egg-info
