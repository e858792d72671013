# Two entry points for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
BASE_VENV ?= .venv-base
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# pytest workers: 2 matches CI's two cores.
WORKERS ?= 2
# tests that must pass with the base install alone (numpy, onnxruntime, Pillow, click; no torch, no onnx)
BASE_TESTS := $(wildcard tests/test_runtime_*.py tests/test_metrics_*.py tests/test_models_contract.py tests/test_cli_explain.py tests/test_cli_info.py tests/test_cli_evaluate.py)

.PHONY: demo test test-full test-base test-node bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[dev]'
	touch $@

$(BASE_VENV)/.installed: pyproject.toml
	python3 -m venv $(BASE_VENV)
	$(BASE_VENV)/bin/pip install -q --upgrade pip
	$(BASE_VENV)/bin/pip install . pytest
	touch $@

demo: $(VENV)/.installed-dev
	$(VENV)/bin/onnxcam demo --out demo-out --overwrite

test: test-full test-base test-node

test-full: $(VENV)/.installed-dev
	$(PY) -m pytest -n $(WORKERS) -q --durations=15 --ignore=tests/test_examples_node.py

# The runtime and the CLI's explain/info with the base install only: torch and onnx must be absent.
test-base: $(BASE_VENV)/.installed
	$(BASE_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'onnx')))" \
		|| (echo "the base install pulled in torch or onnx" && exit 1)
	$(BASE_VENV)/bin/python -m pytest -q -p no:cacheprovider $(BASE_TESTS)
	rm -rf .base-explain-out
	$(BASE_VENV)/bin/onnxcam explain tests/data/tiny.cam.onnx tests/data --out .base-explain-out

# examples/node with onnxruntime-node from npm (the CPU build inside the package; no CUDA download):
# its heatmap must equal the Python runtime's.
test-node: $(VENV)/.installed-dev
	cd examples/node && ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci --no-audit --no-fund
	ONNXCAM_REQUIRE_NODE=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_examples_node.py

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(BASE_VENV) demo-out .base-explain-out .pytest_cache examples/node/node_modules
