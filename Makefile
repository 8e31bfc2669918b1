# Every target bootstraps .venv on a fresh machine; nothing needs to be installed by hand.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-tmd test lint bench fmt clean schema

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lvm_gateway.demo $(DEMO_ARGS)

demo-tmd: $(STAMP)
	$(BIN)/python -m lvm_gateway.demo --tmd $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	bash bench/ensure-tools.sh
	$(BIN)/python -m bench.proxy_bench $(BENCH_ARGS)

schema: $(STAMP)
	$(BIN)/lvm-gateway schema > deploy/schema/lvm-gateway.schema.json

clean:
	rm -rf $(VENV) .lvm-gateway .pytest_cache .ruff_cache
