# ztmesh — every target a newcomer needs. `make run` and `make test` do all set-up themselves.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: help setup proto certs plugins run test bench lint clean

help:
	@echo "make run    - install what is missing, create dev certificates, start all four services (mTLS)"
	@echo "make test   - install what is missing (PostgreSQL, Redis, OPA, Envoy, Python deps) and run the tests"
	@echo "make bench  - benchmarks in bench/, each printed beside its baseline"
	@echo "make proto  - regenerate services/_proto from proto/"
	@echo "make certs  - create a dev CA and workload certificates in ./certs"
	@echo "make plugins - build the example WebAssembly plugins"
	@echo "make lint   - ruff and mypy"

setup:
	bash scripts/install-deps.sh

proto:
	$(PYTHON) scripts/gen_protos.py

certs:
	@test -f certs/ca.crt || ztmesh certs init --dir certs

plugins:
	@if [ -f plugins/Makefile ]; then $(MAKE) -C plugins; fi

run: setup certs plugins
	ztmesh up

test: setup plugins
	CI=$${CI:-} $(PYTHON) -m pytest $(PYTEST_ARGS)

bench:
	bash scripts/install-deps.sh --bench
	$(MAKE) plugins
	$(PYTHON) bench/run.py

lint:
	ruff check services tests bench scripts
	mypy services tests

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache plugins/build
