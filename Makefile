# vecstore developer commands. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GPU_PYTHON ?= python3
STAMP := $(VENV)/.installed
DATA ?= ./data
HOST ?= 127.0.0.1
PORT ?= 50051
URL ?= $(HOST):$(PORT)

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP) ## create the virtualenv and install vecstore with its dev and bench extras

test: $(STAMP) ## run the test suite (GPU tests skip without a GPU)
	$(PY) -m pytest -q

bench: $(STAMP) ## run the main benchmark on the bundled data set and write bench/results/
	$(PY) -m bench run

bench-peers: $(STAMP) ## our codecs beside faiss, turbovec and rabitqlib on the bundled set, 5 seeds
	$(PY) -m pip install --quiet -e '.[peers]'
	$(PY) -m bench run --peers faiss,turbovec,rabitqlib --seeds 5

bench-gpu: ## on a GPU machine: our kernels against cuBLAS flat search (needs CuPy and PyTorch in GPU_PYTHON)
	$(GPU_PYTHON) -m bench gpu --out bench/results/gpu.jsonl

bench-storage: $(STAMP) ## insert throughput and reopen time of 1M d=384 tq4 rows on disk (needs ../shared)
	$(PY) -m bench storage --dataset text-minilm384 --n 1000000 --codec tq4

bench-load: $(STAMP) ## load-test a running server at URL: QPS and p50/p95/p99 at 1, 8, 32 clients (needs ../shared)
	$(PY) -m bench load --url $(URL) --dataset text-minilm384 --n 1000000 --codec tq4 \
		--concurrency 1,8,32 --duration 30

bench-plot: $(STAMP) ## draw recall vs bytes and vs QPS from bench/results/*.jsonl
	$(PY) -m bench plot bench/results/*.jsonl

lint: $(STAMP) ## check style with ruff
	$(PY) -m ruff check vecstore bench tests

serve: $(STAMP) ## serve the database in DATA over gRPC on HOST:PORT (127.0.0.1:50051)
	$(PY) -m vecstore serve --data $(DATA) --host $(HOST) --port $(PORT)

proto: $(STAMP) ## regenerate the gRPC stubs in vecstore/v1 from proto/vecstore/v1/vecstore.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
		proto/vecstore/v1/vecstore.proto

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info

.PHONY: help setup test bench bench-peers bench-gpu bench-storage bench-load bench-plot lint \
	serve proto clean
