# Developer / CI entry points. `make test` is what .ci/run executes.

SHELL := /bin/bash

PYTHON_BOOT ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PIP_TOOLS_VENV := $(VENV)-piptools
# `make test` leaves out the long runs of the fault suite (marker `reliability`: make reliability);
# a test still running after 300 s fails with the stacks of its threads (pytest-timeout).
PYTEST_ARGS ?= -m "not reliability" --timeout=300
RELIABILITY_ARGS ?=
RELIABILITY_FIGURES ?= var/reliability-figures.jsonl
LOCK_ARGS   ?=

.PHONY: venv run run-core run-relay demo test reliability lint bench lock clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

# The Smart Proxy on http://127.0.0.1:8000 with the dynflow plugin in-process (config/, ./var).
run: venv
	@mkdir -p var
	$(PY) -m smart_proxy_remote_execution_ssh.keygen var/ssh/id_rsa_foreman_proxy
	$(VENV)/bin/smart-proxy -c config

# The standalone core service on 127.0.0.1:8008 with config/core/settings.yml (SQLite in ./var).
run-core: venv
	@mkdir -p var
	$(PY) -m smart_proxy_remote_execution_ssh.keygen var/ssh/id_rsa_foreman_proxy
	$(VENV)/bin/smart-proxy-dynflow-core -c config/core

# The Smart Proxy on 127.0.0.1:8000 relaying /dynflow to the core of `make run-core`.
run-relay: venv
	$(VENV)/bin/smart-proxy -c config/relay

# The workflow engine on its own: a demo of plans, events and recovery.
demo: venv
	$(PY) -m dynflow.demo

test: venv
	scripts/test-deps.sh
	$(PY) -m pytest $(PYTEST_ARGS)

# The fault suite, fast and long runs (docs/reliability.md): SIGKILL/SIGTERM with hundreds of
# jobs, Foreman away, PostgreSQL restarted, the SQLite disk full, hosts failing, hostile input,
# property tests. Every figure is printed as a JSON line and collected in $(RELIABILITY_FIGURES).
# Needs root (sshd users, tmpfs, network namespaces); under 30 minutes on 2 cores.
reliability: venv
	scripts/test-deps.sh
	@mkdir -p $(dir $(RELIABILITY_FIGURES)) && : > $(RELIABILITY_FIGURES)
	@# both parts run (the figures of all of them), then the target fails if either failed;
	@# the second part holds the long runs other parts keep next to their tests (exit 5: none)
	RELIABILITY_FIGURES=$(abspath $(RELIABILITY_FIGURES)) $(PY) -m pytest tests/reliability \
		$(RELIABILITY_ARGS); first=$$?; \
	RELIABILITY_FIGURES=$(abspath $(RELIABILITY_FIGURES)) $(PY) -m pytest tests -m reliability \
		--ignore=tests/reliability $(RELIABILITY_ARGS); second=$$?; \
	echo "figures: $(RELIABILITY_FIGURES) ($$(wc -l < $(RELIABILITY_FIGURES)) lines)"; \
	test $$first -eq 0 && { test $$second -eq 0 || test $$second -eq 5; }

lint: venv
	$(VENV)/bin/ruff check src tests bench examples scripts
	$(VENV)/bin/mypy

bench: venv
	$(PY) bench/engine.py
	$(PY) bench/api.py
	$(PY) bench/rex.py
	$(PY) bench/console.py

# Regenerate the pinned lock file from pyproject.toml (runtime deps + `test` extra).
# pip-tools lives in its own throwaway venv so it never touches the project venv.
# Existing pins are kept where still allowed; `make lock LOCK_ARGS=--upgrade` bumps all.
lock:
	@test -x $(PIP_TOOLS_VENV)/bin/pip-compile || { \
		$(PYTHON_BOOT) -m venv $(PIP_TOOLS_VENV) && \
		$(PIP_TOOLS_VENV)/bin/pip install --quiet --upgrade pip pip-tools; }
	$(PIP_TOOLS_VENV)/bin/pip-compile --quiet $(LOCK_ARGS) --no-emit-index-url --no-emit-find-links \
		--extra test --strip-extras -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) $(PIP_TOOLS_VENV) build dist .pytest_cache .ruff_cache
	find src tests bench examples -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
	find src -maxdepth 1 -name '*.egg-info' -type d -exec rm -rf {} + 2>/dev/null || true
