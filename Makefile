# Development entry points. `make test` is what CI runs (see .ci/run).
#
# torch is installed first, pinned, so pip takes the CPU wheel that lies on the machine's disk
# instead of resolving `torch>=2.4` to a multi-GB CUDA build. Override TORCH_SPEC for another build.

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The stamp is named after pyproject.toml's content, so editing dependencies triggers a reinstall
# and an unchanged file skips it.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: install test lint demo base-install-check

install: $(STAMP)

$(STAMP):
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --upgrade pip
	$(VENV_PY) -c "import torch" 2>/dev/null || $(VENV_PY) -m pip install "$(TORCH_SPEC)"
	$(VENV_PY) -m pip install -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	bash scripts/ensure_chromium.sh || echo "chromium could not be installed: the browser test will be skipped"
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV_PY) -m ruff check .

# M3 on a laptop CPU: score the shipped tiny M3-Shapes model at every visual-token budget
# (table on stdout, plot in playground/data/shapes-demo/shapes_accuracy.png).
demo: install
	$(VENV_PY) -m llava.eval.shapes_demo

# What `pip install -e .` alone gives a user: a fresh venv (temp dir) with only the pinned torch and the
# base install runs the controller, a worker with the shipped model, the web demo, the CLI and run_llava
# (scripts/ci/base_install_check.sh; CI runs it too). A few minutes, most of it pip.
base-install-check:
	TORCH_SPEC="$(TORCH_SPEC)" PYTHON="$(PYTHON)" bash scripts/ci/base_install_check.sh
