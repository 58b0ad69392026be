# Two commands for users: `make quickstart` (the main job, end to end) and `make test`.
# Both install what they need on a fresh Debian 12 machine (as root); re-running is quick.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup quickstart test clean

# Debian packages first (tpm2-pytss compiles against libtss2-dev, the shim against
# libssl-dev), then the virtualenv, rebuilt when the package's build inputs change.
setup:
	@helpers/setup-debian.sh
	@$(MAKE) -s $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard tpmtls/provider/*.c tpmtls/provider/*.h)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

quickstart: setup
	$(VENV)/bin/tpmtls quickstart

test: setup
	$(PY) -m ruff check tpmtls tests benchmarks
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) build *.egg-info
