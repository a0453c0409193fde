# The two set-up commands of the README: `make run` (sample data) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := fixtures/cases/sample

.PHONY: run test lint soak bench bench-1m bench-sql bench-daemon dashboards fuzz fixtures clean

$(BIN)/prosody-lastlog: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The daemon on the sample data, its clock set to the sample's "now"; Ctrl-C stops it.
run: $(BIN)/prosody-lastlog
	@$(BIN)/prosody-lastlog serve --data-dir $(SAMPLE)/data \
		--as-of $$($(BIN)/python -c 'import json; print(json.load(open("$(SAMPLE)/expected.json"))["now"])')

lint: $(BIN)/prosody-lastlog
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports  # the layer rule: [tool.importlinter] in pyproject.toml

test: $(BIN)/prosody-lastlog lint
	tools/install-debian-packages.sh
	tools/prosody13-tree.sh
	$(BIN)/python -m pytest

# The chaos soak (soak/README.md): serve under faults for MINUTES (default 10), then checks; needs root (a tmpfs).
MINUTES ?= 10
soak: $(BIN)/prosody-lastlog
	tools/install-debian-packages.sh
	$(BIN)/python -m soak --minutes $(MINUTES)

# The benchmark suite (benchmarks/suite.py): seed, I/O floor and cold scan (Prosody 0.12 and 13 file stores); SQL seed
# pattern and pushdown; the daemon.
bench: $(BIN)/prosody-lastlog
	tools/install-debian-packages.sh
	tools/prosody13-tree.sh
	$(BIN)/python benchmarks/suite.py --sizes 10000,100000

bench-1m: $(BIN)/prosody-lastlog
	tools/install-debian-packages.sh
	tools/prosody13-tree.sh
	$(BIN)/python benchmarks/suite.py --sizes 10000,100000 --million

# Coverage-guided fuzzing (fuzz/README.md): 100,000 inputs per target; exits non-zero on a crash.
fuzz: $(BIN)/prosody-lastlog
	$(BIN)/python fuzz/run.py --runs 100000 --max-total-time 900

# The Grafana dashboards are generated: edit dashboards/generate.py, then run this.
dashboards: $(BIN)/prosody-lastlog
	$(BIN)/python dashboards/generate.py

bench-sql: $(BIN)/prosody-lastlog
	$(BIN)/python benchmarks/sql_count.py --users 1000000 --repeat 3

bench-daemon: $(BIN)/prosody-lastlog
	tools/install-debian-packages.sh
	$(BIN)/python benchmarks/daemon.py --users 1000000 --repeat 3

fixtures: $(BIN)/prosody-lastlog
	tools/install-debian-packages.sh
	tools/prosody13-tree.sh
	$(BIN)/python fixtures/make_fixtures.py
	$(BIN)/python fixtures/make_fixtures.py --sql sqlite --case sample --case boundaries --case lastlog_legacy \
		--case account_activity --case prosody13 --case lifecycle
	$(BIN)/python fixtures/make_hostile.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache *.egg-info
