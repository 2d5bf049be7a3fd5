# fsslib: every target sets itself up (virtual environment in .venv, requirements installed once).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= default

.PHONY: test reproduce setup clean-venv

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest

reproduce: $(VENV)/.installed
	$(PY) -m fsslib reproduce --profile $(PROFILE)

clean-venv:
	rm -rf $(VENV)
