# Peregrine: two commands on a fresh clone.
#   make serve   set up, build the bundled models, serve them on 127.0.0.1 (gRPC 8001, metrics 8002)
#   make test    set up the same way and run the whole test suite
# On a GPU machine: make serve EXTRAS=gpu,test (onnxruntime-gpu + CuPy instead of onnxruntime).

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,test
MODELS ?= models
HOST ?= 127.0.0.1
GRPC_PORT ?= 8001
HTTP_PORT ?= 8002
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.peregrine-$(subst $(comma),-,$(EXTRAS))
comma := ,
SOURCES := $(shell find server modelgen kernels proto clients -type f \( -name '*.py' -o -name '*.proto' -o -name '*.cpp' \
             -o -name '*.hpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name 'CMakeLists.txt' \) 2>/dev/null)

.PHONY: setup models serve test lint bench-oip clean ros1 postgres perf-analyzer

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Two distributions: peregrine-client (clients/: peregrine.client, peregrine.proto) and the server, which
# depends on it. The server is uninstalled first: a server installed before the split still lists the client's
# files as its own, and replacing it after the client went in would delete them.
$(STAMP): $(PY) pyproject.toml CMakeLists.txt clients/pyproject.toml $(SOURCES)
	$(PY) -m pip uninstall --quiet --yes peregrine
	$(PY) -m pip install --quiet ./clients ".[$(EXTRAS)]"
	rm -f $(VENV)/.peregrine-*
	touch $@

setup: $(STAMP)

models: setup
	$(VENV)/bin/peregrine-build-models --repository $(MODELS) --images images

serve: models
	$(VENV)/bin/peregrine-server --model-repository $(MODELS) --host $(HOST) \
		--grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT)

# ROS 1 from Debian for the live ROS bridge test (tests/ros skips, saying why, where it cannot be installed).
ros1:
	sh clients/ros/install_ros1.sh

# PostgreSQL from Debian for the shared job store's tests (they start a private server; skip where it cannot be).
postgres:
	sh tests/support/install_postgres.sh

# Triton's perf_analyzer for the tests that run it against the HTTP port (they skip, saying why, without it).
perf-analyzer:
	bash benchmarks/tools/install_perf_analyzer.sh || echo "perf_analyzer could not be installed: its tests skip"

test: models ros1 postgres perf-analyzer
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m pip install --quiet ruff import-linter
	$(VENV)/bin/ruff check server modelgen clients kernels tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

# Served vs in-process ONNX Runtime under Triton's perf_analyzer (docs/BENCHMARKS.md).
bench-oip: models
	bash benchmarks/tools/install_perf_analyzer.sh
	$(PY) benchmarks/bench_oip.py --repository $(MODELS)

clean:
	rm -rf build dist $(VENV)
