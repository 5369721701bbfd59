# msa-gateway: `make run` starts the demo, `make test` runs lint and the whole suite.
# Both install what they need on a fresh Debian machine (run as root): Debian packages and a venv.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEB_PACKAGES := nginx-light wrk redis-server etcd-server etcd-client prometheus chromium chromium-driver valgrind

.PHONY: run test lint unit coverage compile integration bench bench-compare bench-stream bench-discovery bench-faults deps venv clean check-config

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	MSA_GATEWAY_PURE=1 $(PIP) install -q -e '.[dev]'
	touch $@

# The request path's modules (src/msa_gateway/compiled.txt) built in place as C extensions by mypyc
# (setup.py); rebuilt when one of them changes. MSA_GATEWAY_PURE=1 runs their sources instead.
COMPILED := src/msa_gateway/compiled.txt $(addprefix src/msa_gateway/,$(shell grep -v -e '^\#' -e '^$$' src/msa_gateway/compiled.txt))

$(VENV)/.compiled: $(VENV)/.installed setup.py $(COMPILED)
	@mkdir -p build
	find src/msa_gateway -name '*.so' -delete  # a module taken off the list leaves no extension behind
	$(PY) setup.py -q build_ext --inplace > build/compile.log 2>&1 || { cat build/compile.log; exit 1; }
	touch src/msa_gateway__mypyc.*.so $@  # up to date with the sources, also when no C changed

venv: $(VENV)/.installed $(VENV)/.compiled
compile: $(VENV)/.compiled

# Debian packages the tests and the benchmark run against (real redis-server, etcd, nginx, wrk).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

run: venv
	$(PY) -m examples.run_demo

lint: venv
	$(VENV)/bin/ruff check src tests bench examples app setup.py
	$(VENV)/bin/ruff format --check src tests bench examples app setup.py
	$(VENV)/bin/mypy

test: deps venv lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# Line coverage of the request path by the unit tests alone (no sockets): handler, attempts, exchange.
coverage: venv
	MSA_GATEWAY_PURE=1 $(VENV)/bin/pytest -q -p no:cacheprovider tests/unit --cov=msa_gateway.proxy --cov=msa_gateway.policies --cov-report=term

integration: deps venv
	$(VENV)/bin/pytest -q tests/integration

bench: deps venv
	$(PY) -m bench.run --runs 3 --wait-quiet 120

# The gateway of REV (default HEAD~1) against this checkout's, in one run (see bench/README.md).
bench-compare: deps venv
	$(PY) -m bench.compare --rev $(or $(REV),HEAD~1) --runs 3 --wait-quiet 120

bench-stream: deps venv
	$(PY) -m bench.stream

bench-discovery: deps venv
	$(PY) -m bench.discovery

bench-faults: deps venv
	$(PY) -m bench.faults

check-config: venv
	$(VENV)/bin/msa-gateway check-config $(or $(FILE),examples/gateway.yaml)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info src/*.egg-info
	find src -name '*.so' -delete
