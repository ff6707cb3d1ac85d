# `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: demo test test-vision bench-toy2d clean

$(BIN)/vpfb: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/vpfb
	$(BIN)/vpfb demo --out demo

test: $(BIN)/vpfb
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

bench-toy2d: $(BIN)/vpfb
	$(BIN)/pip install -q ".[bench]" --no-deps torchcfm
	$(BIN)/python benchmarks/toy2d.py

clean:
	rm -rf $(VENV) demo runs
