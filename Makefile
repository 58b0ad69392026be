# Two commands for users: `make quickstart` (the main job, end to end) and `make test`;
# `make install` for a machine that runs tpmtls (docs/install.md). Each installs the Debian
# packages it needs, and only those (helpers/setup-debian.sh); re-running is quick.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# The Pythons the wheel and sdist are tested on besides $(PYTHON) (pyenv versions or pythonX.Y
# on PATH), and the one the lowest declared dependency versions are tested on.
PYTHONS ?= 3.10 3.11 3.12 3.13
LOWEST_PYTHON ?= 3.10
# make install: the venv, where the commands are linked, where the units go.
PREFIX ?= /opt/tpmtls
BINDIR ?= /usr/local/bin
UNITDIR ?= /usr/local/lib/systemd/system
INSTALL_PYTHON ?= /usr/bin/python3

.PHONY: setup quickstart test test-suite test-matrix wheel install uninstall clean

# The development venv: the package in place with the test tools (make test's stack).
setup:
	@helpers/setup-debian.sh test
	@$(MAKE) -s $(VENV)/.installed-dev

# Rebuilt when the package's build inputs change.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard tpmtls/provider/*.c tpmtls/provider/*.h)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip
	@$(PIP) -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	@$(PIP) -e '.[dev]'
	@touch $@

quickstart:
	@helpers/setup-debian.sh quickstart
	@$(MAKE) -s $(VENV)/.installed
	$(VENV)/bin/tpmtls quickstart

# The whole suite on $(PYTHON), then the built wheel and sdist on every Python in $(PYTHONS)
# and with the lowest dependency versions pyproject.toml allows (helpers/test-matrix.py).
test: setup
	$(PY) -m ruff check tpmtls tests benchmarks helpers
	$(PY) -m pytest tests
	$(PY) helpers/test-matrix.py --pythons "$(PYTHONS)" --lowest $(LOWEST_PYTHON)

test-matrix: setup
	$(PY) helpers/test-matrix.py --pythons "$(PYTHONS)" --lowest $(LOWEST_PYTHON)

# dist/: the sdist and one py3-none-manylinux wheel for this machine's architecture.
wheel: setup
	$(PY) helpers/test-matrix.py --build-only --dist dist

install:
	@helpers/setup-debian.sh install
	@PREFIX=$(PREFIX) BINDIR=$(BINDIR) UNITDIR=$(UNITDIR) PYTHON=$(INSTALL_PYTHON) helpers/install-system.sh install

uninstall:
	@PREFIX=$(PREFIX) BINDIR=$(BINDIR) UNITDIR=$(UNITDIR) helpers/install-system.sh uninstall

clean:
	rm -rf $(VENV) build dist *.egg-info tpmtls/provider/_shim*.so
