# kimi-operator: every target is listed by `make help`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= .venv/bin/python
VENV_STAMP := .venv/.installed
VLLM_VENV_STAMP := .venv-vllm/.installed
export PYTHONPATH := $(CURDIR)/hack:$(CURDIR)/operator
CLUSTER ?= default
BIN_DIR ?= $(or $(KIMI_TESTBED_BIN_DIR),$(or $(KIMI_CACHE_DIR),$(HOME)/.cache/kimi-operator)/bin/current)
ACTIONLINT_VERSION := v1.7.12
ACTIONLINT := $(or $(KIMI_CACHE_DIR),$(HOME)/.cache/kimi-operator)/tools/actionlint-$(ACTIONLINT_VERSION)/actionlint

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml hack/contract-requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[dev,fetch]'
	.venv/bin/pip install -q --no-deps -r hack/contract-requirements.txt
	touch $@

# The pinned vLLM for tests/contract/test_vllm_launch.py: its own venv (its pins conflict with sglang's)
$(VLLM_VENV_STAMP): hack/contract-requirements-vllm.txt
	python3 -m venv .venv-vllm
	echo '*' > .venv-vllm/.gitignore
	.venv-vllm/bin/pip install -q --upgrade pip
	.venv-vllm/bin/pip install -q --no-deps -r hack/contract-requirements-vllm.txt
	touch $@

.PHONY: venv
venv: $(VENV_STAMP) $(VLLM_VENV_STAMP) ## Create .venv (operator, dev tools, pinned sglang parser) and .venv-vllm (pinned vLLM)

.PHONY: bins
bins: ## Build (once, cached in ~/.cache/kimi-operator) the control-plane binaries from the Go module proxy
	bash hack/build-bins.sh

.PHONY: images
images: venv ## Build (once, cached by input hash) the operator image from its Dockerfile and the stand-in test images
	$(PY) -m kimi_testbed.images build

$(ACTIONLINT):
	GOBIN=$(dir $@) CGO_ENABLED=0 go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

.PHONY: node-deps
node-deps: ## Install (once, as root, from Debian) what the real node and the tests run: containerd, runc, CNI, prometheus
	bash hack/node/install.sh

.PHONY: cluster-up
cluster-up: venv bins node-deps ## Start a local control plane: simulated 8-GPU kwok nodes and one real node
	$(PY) -m kimi_testbed.cluster up --name $(CLUSTER) --real-node

.PHONY: cluster-down
cluster-down: ## Stop the local control plane started by cluster-up
	$(PY) -m kimi_testbed.cluster down --name $(CLUSTER)

.PHONY: crds
crds: venv ## Regenerate crds/ and the charts' copies from the models
	$(PY) -m kimi_operator.api.crd --write crds/
	$(PY) hack/chart_crds.py

.PHONY: chart-lint
chart-lint: venv bins ## helm lint --strict both charts; hadolint the operator Dockerfile
	$(BIN_DIR)/helm lint --strict charts/kimi-operator charts/kimi-deployments --kube-version 1.36.3
	.venv/bin/hadolint images/operator/Dockerfile images/gateway/Dockerfile images/llamacpp/Dockerfile \
	  images/testing/*/Dockerfile

.PHONY: docs
docs: venv ## Regenerate docs/api.md from the models
	$(PY) -m kimi_operator.api.docs > docs/api.md

.PHONY: lint
lint: venv $(ACTIONLINT) ## ruff lint and format check; import layering (lint-imports); actionlint on the workflows
	.venv/bin/ruff check operator tests hack images
	.venv/bin/ruff format --check operator tests hack images
	.venv/bin/lint-imports --no-logo
	$(ACTIONLINT) .github/workflows/*.yaml

.PHONY: fmt
fmt: venv ## Format and autofix
	.venv/bin/ruff format operator tests hack images
	.venv/bin/ruff check --fix operator tests hack images

.PHONY: typecheck
typecheck: venv ## mypy --strict
	.venv/bin/mypy

.PHONY: unit
unit: venv bins ## Unit tests (no cluster; the chart tests use the helm binary from `make bins`)
	$(PY) -m pytest -q tests/unit

.PHONY: contract
contract: venv ## Every rendered SGLang command line parsed by the pinned sglang's own parser
	$(PY) -m pytest -q tests/contract

.PHONY: test-images
test-images: venv ## The built images' configs and files against their Dockerfiles (builds them first if missing)
	$(PY) -m pytest -q tests/images

.PHONY: test-cluster
test-cluster: venv bins node-deps images ## Tests against the local control plane (started and stopped by the session)
	$(PY) -m pytest -q tests/cluster

.PHONY: test
test: venv bins node-deps images ## All tests: unit, contract, images, cluster, lifecycle (installs and builds what they need)
	$(PY) -m pytest -q tests --ignore=tests/lifecycle
	KIMI_LIFECYCLE_TESTS=1 $(PY) -m pytest -q tests/lifecycle

.PHONY: test-lifecycle
test-lifecycle: venv bins node-deps images ## Killed sessions and the next cluster-up (its own clusters: needs the real node free)
	KIMI_LIFECYCLE_TESTS=1 $(PY) -m pytest -q tests/lifecycle

.PHONY: check
check: lint typecheck test ## Lint, types and all tests

.PHONY: demo
demo: venv bins ## Local control plane + operator + examples/kimi-k2.5-h200.yaml going Ready
	bash hack/demo.sh

.PHONY: demo-down
demo-down: ## Stop what `KEEP=1 make demo` left running
	bash hack/demo.sh down

.PHONY: bench
bench: venv bins ## Benchmarks (numbers, not pass/fail): autoscaler policy, fetcher, gateway routing, operator on a local cluster
	$(PY) hack/bench_autoscaler.py
	$(PY) hack/bench_fetch.py
	$(PY) hack/bench_gateway.py
	$(PY) hack/bench.py
