# Local Kubernetes cluster for the cluster tests (hack/cluster/localcluster.py; see deploy/README.md,
# "Cluster tests"): a control plane, simulated GPU nodes and one real node (kubelet + containerd in a network
# namespace). Binaries are built from pinned Go modules (hack/cluster/*/go.mod, KServe v0.20.0) and cached
# under ~/.cache/shoprank/cluster/<versions>/bin ($SHOPRANK_CACHE_DIR overrides ~/.cache/shoprank); the node's
# images (pause, Debian base, serving, KServe's storage initializer) are built here with podman.
#
#   make cluster-up       build (cold: tens of minutes, then cached) and start it; prints the KUBECONFIG to use
#   make cluster-images   rebuild the images that changed (the serving image after a code change), load them
#   make cluster-demo     on a running cluster: deploy the cpu overlay, promote runs/latest, one ranking answer
#   make cluster-down     stop it (only the processes it started), remove its state, the network namespace
#   make test-cluster     the cluster tests; start the cluster if none is up (and stop it again afterwards)
#   make test-cluster CLUSTER=kind   the same tests against the current kind context (after `make kind-up`)

CLUSTER ?= local
CLUSTER_PY = $(PY) hack/cluster/localcluster.py
CLUSTER_TEST_ARGS ?=

.PHONY: cluster-build cluster-up cluster-down cluster-status cluster-images cluster-demo test-cluster

cluster-build: venv ## build (or find cached) etcd, kube-*, kubelet, kwok, KServe, metrics-server, kube-score, versitygw
	$(CLUSTER_PY) build

cluster-up: venv ## start the local cluster: control plane, KServe, simulated GPU nodes, a real node (builds if needed)
	$(CLUSTER_PY) up

cluster-images: venv ## rebuild the node's images that changed (serving after a code change) and load them
	$(CLUSTER_PY) images

cluster-demo: venv ## on a running local cluster: deploy OVERLAY=cpu, promote $(RUNS)/latest, print one ranking answer
	$(PY) hack/cluster/demo.py --runs '$(RUNS)'

cluster-down: ## stop the local cluster and remove its state
	@if [ -x "$(PY)" ]; then $(CLUSTER_PY) down; else python3 hack/cluster/localcluster.py down; fi

cluster-status: venv ## which cluster processes run, and the KUBECONFIG
	$(CLUSTER_PY) status

test-cluster: venv ## cluster tests (tests/cluster) against the local cluster, or CLUSTER=kind
	@if [ "$(CLUSTER)" = local ] && $(CLUSTER_PY) status >/dev/null 2>&1; then $(CLUSTER_PY) images; fi
	SHOPRANK_CLUSTER_TESTS=1 CLUSTER='$(CLUSTER)' $(PY) -m pytest tests/cluster -p no:cacheprovider \
		-o addopts='-q -ra' -m cluster --durations=0 $(CLUSTER_TEST_ARGS)
