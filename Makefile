# The two commands a newcomer needs: `make local` and `make test`.
# Both install everything from the pinned files in this repo into .venv and node_modules.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: local test lint format system-deps bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

system-deps:
	bash scripts/system-deps.sh

local: $(STAMP)
	$(BIN)/campfleet local

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/program_scaling.py
	$(BIN)/python benchmarks/control_ingest.py
	$(BIN)/python benchmarks/spawn_storm.py
	$(BIN)/python benchmarks/alert_latency.py
	$(BIN)/python benchmarks/fleet_cost.py
	$(BIN)/python benchmarks/storm_1000.py
	$(BIN)/python benchmarks/proxy_websockets.py
	$(BIN)/python benchmarks/tls_hop.py
	$(BIN)/python benchmarks/container_storm.py
	$(BIN)/python benchmarks/boot_rehearsal.py

clean:
	rm -rf $(VENV) node_modules .campfleet .pytest_cache .ruff_cache
