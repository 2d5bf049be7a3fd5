# fsslib: every target sets itself up (virtual environment in .venv, requirements installed once).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Empty: `reproduce` picks the gpu profile where torch sees a CUDA device, else default.
PROFILE ?=

.PHONY: test test-all test-slow-ci book reproduce setup clean-venv

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

# One intra-op thread: the tests run many tiny convolutions, where two threads on two cores
# (or beside another job) spend most of their time waiting on each other.
# ruff first: lint and import order fail fast, before the slow tests.
test: $(VENV)/.installed
	$(PY) -m ruff check fsslib tests tools
	OMP_NUM_THREADS=1 $(PY) -m pytest

# Everything, the default-mode notebooks on fresh folders included (an hour on a 2-core CPU).
test-all: $(VENV)/.installed
	$(PY) -m ruff check fsslib tests tools
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "slow or not slow"

# The slow tests that fit CI's budget: notebook 01 in default mode on fresh folders (about 3 minutes).
test-slow-ci: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -m slow -k "01_episodes"

# Execute every notebook (default mode) into docs/notebooks/, then build the static site in docs/_build/.
book: $(VENV)/.installed
	$(PY) tools/nbtools.py book --execute

reproduce: $(VENV)/.installed
	$(PY) -m fsslib reproduce $(if $(PROFILE),--profile $(PROFILE))

clean-venv:
	rm -rf $(VENV)
