# Every target bootstraps .venv on a fresh machine; nothing needs to be installed by hand.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NATIVE := lvm_gateway/_native.json

.PHONY: demo demo-tmd test chaos lint bench fmt clean schema native

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The request path compiled with mypyc (lvm_gateway/native.py): rebuilt when any source changed,
# since the compiled modules read the others' types; a failed build stops here, loudly.
native: $(NATIVE)
$(NATIVE): $(STAMP) pyproject.toml $(shell find lvm_gateway -name '*.py' 2>/dev/null)
	LVM_GATEWAY_PURE=1 $(BIN)/python -c 'from lvm_gateway.native import main; main(["build"])'

demo: $(NATIVE)
	$(BIN)/python -m lvm_gateway.demo $(DEMO_ARGS)

demo-tmd: $(NATIVE)
	$(BIN)/python -m lvm_gateway.demo --tmd $(DEMO_ARGS)

test: $(NATIVE)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The chaos suite in full (make test runs it bounded): real processes SIGKILLed under load,
# broken policy edits, operators racing; prints one table row per scenario (README "Chaos").
chaos: $(NATIVE)
	LVM_CHAOS=full $(BIN)/python -m pytest -q -s --timeout 900 tests/chaos

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(NATIVE)
	bash bench/ensure-tools.sh
	$(BIN)/python -m bench.proxy_bench $(BENCH_ARGS)
	$(BIN)/python -m bench.payload_bench $(PAYLOAD_ARGS)

schema: $(STAMP)
	$(BIN)/lvm-gateway schema > deploy/schema/lvm-gateway.schema.json

# Stop the embedded redis-server before deleting its directory: removed under it, it would run on
# as an orphan on deleted files. Through rolloutctl when the venv has it, else by its pid file
# (only when that pid is still a redis-server), waiting up to 5 s for it to exit.
clean:
	@LVM_GATEWAY_HOME=$(CURDIR)/.lvm-gateway $(BIN)/rolloutctl embedded stop 2>/dev/null || { \
	  pid=$$(cat .lvm-gateway/redis.pid 2>/dev/null) && \
	  grep -q redis-server /proc/$$pid/cmdline 2>/dev/null && kill $$pid && \
	  for i in $$(seq 50); do grep -q redis-server /proc/$$pid/cmdline 2>/dev/null || break; \
	    sleep 0.1; done; \
	} ; true
	rm -rf $(VENV) .lvm-gateway .pytest_cache .ruff_cache build $(NATIVE)
	rm -f lvm_gateway/*.so lvm_gateway/*/*.so lvm_gateway/*/*/*.so
