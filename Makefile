# Two commands matter: `make run` (the product, on the embedded engine when no A1111 is installed)
# and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# the exact versions the tests passed with (`make lock` rewrites it); `make setup CONSTRAINTS=` resolves afresh
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: setup run test lint bench clean lock

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so the engine extra's range keeps it (no multi-GB CUDA download)
	$(PY) -m pip install -q $(PIP_CONSTRAINTS) torch==$(TORCH_VERSION)
	$(PY) -m pip install -q $(PIP_CONSTRAINTS) -e '.[engine,dev]'
	touch $@

# after changing pyproject.toml's dependencies: rewrite constraints.txt from .venv, then `make test`, commit both
lock: setup
	$(PY) scripts/freeze_constraints.py

run: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" WORKER_MODE="$${WORKER_MODE:-local}" ./start.sh

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: setup
	$(PY) bench/worker_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
