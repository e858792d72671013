# Two entry points for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
BASE_VENV ?= .venv-base
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# pytest workers: 2 matches CI's two cores.
WORKERS ?= 2
# tests that must pass with the base install alone (numpy, onnxruntime, Pillow, click; no torch, no onnx)
BASE_TESTS := $(wildcard tests/test_runtime_*.py tests/test_metrics_*.py tests/test_models_contract.py tests/test_cli_explain.py tests/test_cli_info.py tests/test_cli_evaluate.py)

.PHONY: demo web test test-full test-base test-node test-web web-deps bench clean

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

test: test-full test-base test-node test-web

test-full: $(VENV)/.installed-dev
	$(PY) -m pytest -n $(WORKERS) -q --durations=15 --ignore=tests/test_examples_node.py --ignore=tests/test_examples_web.py

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

# examples/web in Debian's headless Chromium (installed here when missing; no browser download) with
# onnxruntime-web and playwright-core from the lock file: its heatmaps must equal the Python runtime's.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
web-deps:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)
	cd examples/web && npm ci --no-audit --no-fund

test-web: $(VENV)/.installed-dev web-deps
	ONNXCAM_REQUIRE_WEB=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_examples_web.py

# The browser page on loopback with the demo model, one graph per method (exported once into .web-models/).
WEB_METHODS ?= gradcam gradcam++ layercam
WEB_GRAPHS := $(foreach m,$(WEB_METHODS),.web-models/efficientnet-lite0.$(m).cam.onnx)
.web-models/efficientnet-lite0.%.cam.onnx: | $(VENV)/.installed-dev
	mkdir -p .web-models
	$(VENV)/bin/onnxcam export efficientnet-lite0 -o $@ --raw-input --heatmap $* --overwrite

web: $(WEB_GRAPHS)
	cd examples/web && npm ci --no-audit --no-fund
	$(PY) examples/web/serve.py $(WEB_GRAPHS) --port $(or $(PORT),8000)

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(BASE_VENV) demo-out .base-explain-out .pytest_cache examples/node/node_modules \
		examples/web/node_modules .web-models test-artifacts
