# `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: demo test lint test-vision bench-toy2d clean

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

lint: $(BIN)/vpfb
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The `vision` extra needs the CUDA torch build (it also runs on CPU): a second environment, the whole suite again.
VISION_VENV := .venv-vision
VISION_TORCH ?= torch==2.14.1 torchvision==0.29.1

$(VISION_VENV)/bin/vpfb: pyproject.toml
	$(PY) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/pip install -q --upgrade pip
	$(VISION_VENV)/bin/pip install -q $(VISION_TORCH)
	$(VISION_VENV)/bin/pip install -q -e ".[dev,vision]"
	touch $@

test-vision: $(VISION_VENV)/bin/vpfb
	OMP_NUM_THREADS=1 $(VISION_VENV)/bin/python -m pytest -q -n 2 --dist loadfile

bench-toy2d: $(BIN)/vpfb
	$(BIN)/pip install -q pot  # the bench extra, minus torchcfm: its torchdyn would pull in another torch
	$(BIN)/pip install -q --no-deps torchcfm
	$(BIN)/python benchmarks/toy2d.py

clean:
	rm -rf $(VENV) $(VISION_VENV) demo runs
