# codexgw — developer entry points. `make install` is idempotent: each step is guarded by a stamp
# that depends on the files pinning what it installs, so a second run does nothing and is quick.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
CODEX_VERSION := 0.169.0
# `make test TESTS=tests.test_tokens` runs one module (or class, or test) inside the same harness.
TESTS ?= tests
TRIALFLAGS ?=

.PHONY: install dev test lint bench proto clean

install: $(VENV)/.stamp $(TOOLS)/codex/.stamp-$(CODEX_VERSION) $(TOOLS)/s3/.stamp

$(VENV)/.stamp: setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt \
	    -e '.[dev]' --config-settings editable_mode=compat
	touch $@

# The pinned codex CLI; only its native binary is used (resolved by codexgw.codexbin, not by a
# hard-coded platform path).
$(TOOLS)/codex/.stamp-$(CODEX_VERSION): $(VENV)/.stamp
	npm install --prefix $(TOOLS)/codex --no-audit --no-fund --loglevel=error @openai/codex@$(CODEX_VERSION)
	$(BIN)/python -m codexgw.codexbin --check $(TOOLS)/codex $(CODEX_VERSION)
	rm -f $(TOOLS)/codex/.stamp-*
	touch $@

# The local S3 server for tests lives in its own venv so its dependencies never leak into ours.
$(TOOLS)/s3/.stamp: constraints-s3.txt
	test -x $(TOOLS)/s3/bin/python || $(PYTHON) -m venv $(TOOLS)/s3
	$(TOOLS)/s3/bin/python -m pip install -q --disable-pip-version-check -c constraints-s3.txt 'moto[server,s3]'
	touch $@

# The all-in-one dev stack in the foreground (state under ./var; Ctrl-C stops it gracefully).
dev: install
	$(BIN)/twist --log-format=text codexgw-dev

lint: $(VENV)/.stamp
	$(BIN)/ruff check codexgw tests bench
	$(BIN)/ruff format --check codexgw tests bench
	$(BIN)/mypy

# The harness starts a throwaway PostgreSQL cluster and a local S3 server, exports them to the tests
# through CXG_TEST_* variables, runs trial, and stops both whatever trial's outcome.
test: install lint
	$(BIN)/python -m tests.harness -- $(BIN)/python -m twisted.trial $(TRIALFLAGS) $(TESTS)

$(VENV)/.stamp-bench: $(VENV)/.stamp
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt \
	    -e '.[dev,bench]' --config-settings editable_mode=compat
	touch $@

bench: install $(VENV)/.stamp-bench
	$(BIN)/python -m bench

# Regenerate the checked-in relay frame module after editing codexgw/relay.proto.
proto: $(VENV)/.stamp
	$(BIN)/python -m pip install -q grpcio-tools==1.85.1
	$(BIN)/python -m grpc_tools.protoc -Icodexgw --python_out=codexgw --pyi_out=codexgw codexgw/relay.proto

clean:
	rm -rf _trial_temp* .mypy_cache .ruff_cache .hypothesis
