# Aviator — make targets. `make demo` and `make test` work from a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PY          := $(VENV)/bin/python
PYTEST      := $(PY) -m pytest
IMG         ?= aviator-controller:latest
AGENT_IMG   ?= aviator-agent:latest
KUBECTL     ?= $(shell command -v kubectl 2>/dev/null || echo bin/kubectl)
PYTEST_ARGS ?=
export GOTOOLCHAIN := local

.PHONY: help setup venv controlplane node-components images tools build-installer helm-lint krew dashboard-png build build-agent test-unit test-integration test-bpf test-bench-smoke \
        test-e2e test-packaging test run lint fmt manifests install uninstall demo bench \
        docker-build docker-build-agent docker-build-all deploy deploy-agent deploy-all \
        undeploy undeploy-agent undeploy-all

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

venv: $(VENV)/.installed

setup: venv ## venv, Python deps, Debian packages (BCC, headers), bcc import link
	bash hack/setup-system.sh

controlplane: ## build kube-apiserver, kube-controller-manager, kubectl, etcd into bin/
	bash hack/controlplane/build.sh

node-components: ## kubelet and kube-proxy (same Kubernetes version, cached like the control plane) + Debian nftables, containerd, runc, CNI plugins
	bash hack/node-components.sh

images: ## pause, test app, controller and agent images without Docker (buildah, local Debian base) into bin/images/*.tar
	bash hack/images/build.sh

tools: ## build helm, promtool, prometheus and kstatus from Go modules into bin/, cached like the control plane
	bash hack/tools/build.sh

build-installer: ## write dist/install.yaml (CRD, RBAC, controller, agent) for kubectl apply -f (IMG=..., AGENT_IMG=...)
	bash hack/build-installer.sh dist/install.yaml

helm-lint: tools ## helm lint the chart (charts/aviator)
	bin/helm lint --strict charts/aviator

build: venv ## build the controller (a Python package; checks it imports and runs)
	$(VENV)/bin/aviator controller --help >/dev/null && echo "controller: ok"

build-agent: venv ## build the agent (checks it imports and runs)
	$(VENV)/bin/aviator agent --help >/dev/null && echo "agent: ok"

test-unit: venv ## unit and property tests (no cluster)
	$(PYTEST) test/unit $(PYTEST_ARGS)

test-integration: setup controlplane tools ## tests against the real control plane
	$(PYTEST) test/integration $(PYTEST_ARGS)

test-bench-smoke: setup controlplane tools node-components images ## every benchmark at its quick size: rows well formed, figures sane (not the goals: make bench)
	$(PYTEST) test/bench $(PYTEST_ARGS)

test-bpf: setup ## tests that load the real BPF program (root)
	$(PYTEST) test/bpf $(PYTEST_ARGS)

test-e2e: setup controlplane tools node-components images ## e2e scenarios against the cluster in a box and its real node (E2E_CLUSTER=kind for Kind)
	AVIATOR_E2E_REQUIRE_NODE=1 $(PYTEST) test/e2e $(PYTEST_ARGS)

test-packaging: setup controlplane ## build the wheel, install it in a fresh venv, run the agent and the demo from it
	$(PYTEST) test/packaging $(PYTEST_ARGS)

test: setup controlplane tools node-components images ## everything: unit, integration, bpf, e2e in the box and on its real node, packaging, bench smoke
	AVIATOR_E2E_REQUIRE_NODE=1 $(PYTEST) test $(PYTEST_ARGS)

run: venv ## run the controller against the current kubeconfig
	$(VENV)/bin/aviator controller --no-leader-elect

lint: venv ## ruff + mypy
	$(VENV)/bin/ruff check aviator test bench
	$(VENV)/bin/ruff format --check aviator test bench
	$(VENV)/bin/mypy
	$(VENV)/bin/aviator manifests --output config/crd/bases/aviator.example.com_aviatorpolicies.yaml --docs docs/api.md --check

fmt: venv
	$(VENV)/bin/ruff format aviator test bench
	$(VENV)/bin/ruff check --fix aviator test bench

manifests: venv ## regenerate the CRD YAML from aviator/api
	$(VENV)/bin/aviator manifests --output config/crd/bases/aviator.example.com_aviatorpolicies.yaml --docs docs/api.md

install: ## install the CRD into the current kubeconfig's cluster
	$(KUBECTL) apply -k config/crd

uninstall: ## remove the CRD (deletes every AviatorPolicy)
	$(KUBECTL) delete -k config/crd --ignore-not-found

demo: setup controlplane ## the cluster in a box with the quick-start (Ctrl-C to stop)
	$(VENV)/bin/aviator box demo

bench: setup controlplane ## benchmarks; prints a table of ratios
	$(PY) -m bench

define need_docker
	@command -v docker >/dev/null || { echo "$@: needs the docker CLI" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "$@: needs a running Docker engine (docker info failed)" >&2; exit 1; }
endef

docker-build: ## build the controller image (IMG=...)
	$(need_docker)
	docker build -t $(IMG) -f Dockerfile .

docker-build-agent: ## build the agent image (AGENT_IMG=...)
	$(need_docker)
	docker build -t $(AGENT_IMG) -f Dockerfile.agent .

docker-build-all: docker-build docker-build-agent ## build both images

DEPLOY_DIR := .deploy
export IMG AGENT_IMG

deploy: ## namespace, CRD, RBAC and the controller into the current cluster (IMG=...)
	$(KUBECTL) apply -k $$(bash hack/overlay.sh $(DEPLOY_DIR)/controller config/namespace config/crd config/rbac config/manager)

deploy-agent: ## the agent DaemonSet (AGENT_IMG=...)
	$(KUBECTL) apply -k $$(bash hack/overlay.sh $(DEPLOY_DIR)/agent config/namespace config/rbac config/agent)

deploy-all: ## everything (same as kubectl apply -k config/default, with IMG and AGENT_IMG)
	$(KUBECTL) apply -k $$(bash hack/overlay.sh $(DEPLOY_DIR)/all config/default)

undeploy: ## delete every policy first (finalizers restore taken-over Services), then the rest
	-$(KUBECTL) delete aviatorpolicies --all --all-namespaces --wait=true --timeout=120s
	$(KUBECTL) delete -k config/manager --ignore-not-found

undeploy-agent: ## remove the agent DaemonSet
	$(KUBECTL) delete -k config/agent --ignore-not-found

undeploy-all: undeploy undeploy-agent ## policies first, then controller, agent, RBAC, CRD, namespace
	$(KUBECTL) delete -k config/default --ignore-not-found

krew: ## the krew archive and manifest of `kubectl aviator` into dist/krew/
	bash hack/krew.sh dist/krew

dashboard-png: setup controlplane tools ## docs/dashboard.png: every dashboard panel plotted from the box running the quick-start
	AVIATOR_DASHBOARD_PNG=docs/dashboard.png $(PYTEST) test/e2e/test_e2e_monitoring.py
