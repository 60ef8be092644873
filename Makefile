# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# The venv is built once; torch comes from this machine's local wheel cache via pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.featcache-installed

.PHONY: setup demo test lint bench simd clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/featcache demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check featcache tests benchmarks pipeline
	$(VENV)/bin/ruff format --check featcache tests benchmarks pipeline

bench: $(STAMP)
	$(PY) benchmarks/extract_throughput.py
	$(PY) benchmarks/probe_heads.py --epochs 2  # all 28 epochs take over an hour on 2 CPU cores

# Optional: replace Pillow by pillow-simd (same PIL package, faster resize/decode).
simd: $(STAMP)
	$(PY) -m pip uninstall -y pillow
	$(PY) -m pip install -q pillow-simd
