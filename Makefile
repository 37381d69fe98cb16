# Kiln: `make run` and `make test` install whatever is missing, then do the job.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := .make
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help deps host venv vendor run test test-unit test-bpf lint bench clean install-host uninstall-host box vm-test vm-test-ubuntu

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

deps: host venv ## install everything Kiln and its tests need (idempotent)

host: ## apt packages, kernel headers (or a fallback), tracefs/debugfs mounts
	@tools/setup-host.sh

venv: $(STAMP)/venv ## the virtualenv with Kiln installed in editable mode

$(STAMP)/venv: pyproject.toml | host
	@mkdir -p $(STAMP)
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@echo "setup: pip install -e '.[dev]'" >&2
	@$(PY) -m pip install -q -e '.[dev]' 2> >(grep -v "is ignored: it is neither" >&2)
	@touch $@

vendor: ## re-fetch d3 + d3-flame-graph into web/static/vendor at pinned versions (needs npm)
	@web/vendor.sh

run: deps ## start the agent (kiln run): samples the host, keeps history, serves the UI (URL printed)
	$(VENV)/bin/kiln run

test: deps lint ## lint, then the whole suite (BPF tests run for real as root)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

test-unit: deps ## tests that need no root
	$(VENV)/bin/pytest -q tests/unit

test-bpf: deps ## real-kernel tests
	$(VENV)/bin/pytest -q tests/bpf

lint: deps ## ruff and mypy
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/mypy --no-error-summary

bench: deps ## measure the issues' figures side by side, write BENCHMARKS.md
	$(PY) tools/bench.py --output BENCHMARKS.md

install-host: ## install Kiln as a systemd service on this host (vagrant/provision.sh, as root)
	@vagrant/provision.sh

uninstall-host: ## remove kiln.service and /opt/kiln; config and data stay unless PURGE=1
	@vagrant/uninstall.sh $(if $(PURGE),--purge)

box: ## build the local Debian 12 Vagrant box (libvirt): build/kiln-debian12.box
	@tools/vm/build-image.sh --box build/kiln-debian12.box >/dev/null

vm-test: deps ## boot the Debian 12 image under KVM, install Kiln in it, check it from the host
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/vm

vm-test-ubuntu: deps ## the same VM test with an Ubuntu 24.04 guest (not part of `make test`)
	KILN_VM_DISTRO=ubuntu $(VENV)/bin/pytest -q -p no:cacheprovider tests/vm

clean: ## remove the venv and build stamps
	rm -rf $(VENV) $(STAMP) .mypy_cache .ruff_cache .pytest_cache
