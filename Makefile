# `make demo` and `make test` are all a fresh machine needs: they build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages: the corpus is built from the flite synthesiser and the text sources; `make
# paper` transcribes the recorded LibriVox clips of pocketsphinx-testdata.
SYSTEM_PACKAGES := flite sword-text-web diatheke wordnet-base fortunes pocketsphinx-testdata
SYSTEM_STAMP := $(VENV)/.system-packages

# libtpu and the CUDA plugin as compile-only targets of `zipper compile` (1.3 GB; 0: none).
COMPILE_ONLY ?= 1

SUDO := $(shell [ $$(id -u) = 0 ] || echo sudo)

.PHONY: install system-packages test test-fast soak demo paper bench clean

install: $(STAMP)

system-packages: $(SYSTEM_STAMP)

$(SYSTEM_STAMP):
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	mkdir -p $(VENV) && touch $@

$(STAMP): setup.py requirements/base.txt requirements/no-deps.txt requirements/test.txt \
          requirements/compile-only.txt $(SYSTEM_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/base.txt -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/no-deps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	[ "$(COMPILE_ONLY)" = 0 ] || $(PY) -m pip install --quiet --no-deps --target \
	  $(VENV)/compile-only -r requirements/compile-only.txt
	touch $@

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow and not soak" tests

# Multi-process training killed and restarted at random points (minutes): tests/test_soak.py.
soak: $(STAMP)
	$(PY) -m pytest -m soak tests/test_soak.py

demo: $(STAMP)
	$(PY) -m zipper_jax.speech.demo

# The paper's grid and its claims' verdicts: experiments/paper/. On 2 cores about 47 minutes after
# `make demo`, whose runs it reuses; 76 from nothing.
paper: $(STAMP)
	$(PY) -m zipper_jax.speech.paper

# Benchmarks at a quick size (JSON to bench.json); they also need torch and transformers.
bench: $(STAMP) requirements/bench.txt
	$(PY) -m pip install --quiet -r requirements/bench.txt
	$(PY) benchmarks/run_all.py bench.json

clean:
	rm -rf $(VENV) build *.egg-info
