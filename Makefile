# Two entry points for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# pytest workers: 2 matches CI's two cores.
WORKERS ?= 2

.PHONY: demo test bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[dev]'
	touch $@

demo: $(VENV)/.installed-dev
	$(VENV)/bin/onnxcam demo --out demo-out

test: $(VENV)/.installed-dev
	$(PY) -m pytest -n $(WORKERS) -q --durations=15

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
