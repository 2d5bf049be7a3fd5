# fsslib: every target sets itself up (virtual environment in .venv, requirements installed once).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Empty: `reproduce` picks the gpu profile where torch sees a CUDA device, else default.
PROFILE ?=

.PHONY: test reproduce setup clean-venv

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

reproduce: $(VENV)/.installed
	$(PY) -m fsslib reproduce $(if $(PROFILE),--profile $(PROFILE))

clean-venv:
	rm -rf $(VENV)
