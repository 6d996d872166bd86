# Only Python (>= 3.11) and make are needed: uv is bootstrapped into .tools/ from PyPI and installs the
# locked dependencies (uv.lock) into .venv/.
PYTHON ?= python3
UV := .tools/bin/uv
RUN := $(UV) run --frozen
WORKSPACE ?= demo-workspace
STACK_DIR ?= .stack

.PHONY: setup system-deps test test-fast lint typecheck format demo bench clean stack stack-demo

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

.venv/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --compile-bytecode
	touch $@

setup: .venv/.synced

# Servers and tools the tests and benchmarks start themselves, from Debian packages (installed once, when
# missing): Redis for the shared online state, Chromium for the dashboard's browser tests, wrk for load.
SYSTEM_PACKAGES ?= redis-server chromium wrk
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "missing Debian packages:$$missing (install them with apt-get as root)" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: setup system-deps
	$(RUN) ruff check src tests benchmarks
	$(RUN) ruff format --check src tests benchmarks
	$(RUN) mypy
	$(RUN) pytest -n 2 --dist loadfile --no-loadscope-reorder

test-fast: setup system-deps
	$(RUN) pytest -m "not slow"

lint: setup
	$(RUN) ruff check src tests benchmarks

typecheck: setup
	$(RUN) mypy

format: setup
	$(RUN) ruff check --fix src tests benchmarks
	$(RUN) ruff format src tests benchmarks

demo: setup
	$(RUN) fraudops demo $(WORKSPACE)

# A production-like stack on this machine: PostgreSQL, an S3 API server (moto) and an MLflow server over
# them, on 127.0.0.1; prints the environment lines (also in $(STACK_DIR)/env) that point a workspace at it.
stack: setup
	$(RUN) python tests/servers.py up $(STACK_DIR)

# The demo on s3://fraudops/demo with MLflow on PostgreSQL, on a stack started for it and stopped after.
stack-demo: setup
	$(RUN) python tests/servers.py demo $(STACK_DIR)

bench: setup system-deps
	for b in benchmarks/bench_*.py; do $(RUN) python $$b || exit 1; done

clean:
	rm -rf .tools .venv $(WORKSPACE) $(STACK_DIR)
