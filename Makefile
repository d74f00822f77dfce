# Two entry points: `make demo` (set up + run the main job on synthetic data) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-slow clean

$(BIN)/harness: pyproject.toml examples/cornac_peers/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,app,dask]'
	$(BIN)/pip install --quiet -e examples/itemknn
	$(BIN)/pip install --quiet -e examples/cornac_peers
	touch $(BIN)/harness

setup: $(BIN)/harness

demo: setup
	$(BIN)/harness run --method pop --dataset synthetic --seed 0
	$(BIN)/harness run --method sasrec --dataset synthetic --seed 0

test: setup
	$(BIN)/lint-imports
	@echo "running the test suite: about 13 minutes on 2 idle cores, a dot per test"
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
