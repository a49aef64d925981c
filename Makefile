# Two commands do everything on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# The CPU build of PyTorch, pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0

.PHONY: demo test lint bench install install-dev clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_CPU)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/monitor demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check monitor models tests bench
	$(VENV)/bin/ruff format --check monitor models tests bench

bench: $(VENV)/.installed-dev
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
