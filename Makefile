# harden: make dev lint test test-integration bench demo
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: dev services services-vm lint test test-unit test-integration bench demo demo-vm golden schema clean

dev:            ## install harden and its dev tools (editable)
	$(PIP) install -q -e '.[dev]'

services:       ## install and start docker engine, registry, base images (root, idempotent)
	scripts/services.sh

services-vm:    ## the same plus qemu and the cached base VM template
	scripts/services.sh --vm

lint:           ## ruff (format + lint) and mypy strict
	$(PYTHON) -m ruff format --check harden builder verifiers tests bench
	$(PYTHON) -m ruff check harden builder verifiers tests bench
	$(PYTHON) -m mypy

test: dev services-vm   ## unit + integration tests against the real engine and registry
	$(PYTHON) -m pytest -q tests

test-unit: dev
	$(PYTHON) -m pytest -q tests/unit

test-integration: dev services-vm
	$(PYTHON) -m pytest -q tests/integration

bench: dev services  ## benchmarks, printed as ratios and written to bench/results.json
	$(PYTHON) -m bench

demo: dev services   ## the main job end to end on the embedded defaults
	scripts/demo.sh

demo-vm: dev services-vm   ## build, verify and seal the hardened Debian 12 VM template (~3 min, TCG)
	scripts/demo-vm.sh

golden:         ## regenerate golden files (formatter output, canonical attestation JSON)
	HARDEN_REGEN_GOLDEN=1 $(PYTHON) -m pytest -q tests/unit -k golden

schema:         ## regenerate the published JSON Schemas in docs/
	$(PYTHON) -m harden.schemas docs
