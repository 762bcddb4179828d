# Local Kubernetes control plane for the cluster tests (hack/cluster/localcluster.py; see deploy/README.md,
# "Cluster tests"). Binaries are built from pinned Go modules (hack/cluster/*/go.mod, KServe v0.20.0) and cached
# under ~/.cache/shoprank/cluster/<versions>/bin ($SHOPRANK_CACHE_DIR overrides ~/.cache/shoprank).
#
#   make cluster-up       build (cold: tens of minutes, then cached) and start it; prints the KUBECONFIG to use
#   make cluster-down     stop it (only the processes it started) and remove its state
#   make test-cluster     the cluster tests; start the cluster if none is up (and stop it again afterwards); the
#                         training tests also start the Kubeflow Training Operator (hack/cluster/training.py)
#   make test-cluster CLUSTER=kind   the same tests against the current kind context (after `make kind-up`)

CLUSTER ?= local
CLUSTER_PY = $(PY) hack/cluster/localcluster.py
CLUSTER_TEST_ARGS ?=

.PHONY: cluster-build cluster-up cluster-down cluster-status test-cluster

cluster-build: venv ## build (or find cached) etcd, kube-*, kwok, KServe's controller and the training operator
	$(CLUSTER_PY) build
	$(PY) hack/cluster/training.py build

cluster-up: venv ## start the local control plane + KWOK nodes + KServe on loopback (builds binaries if needed)
	$(CLUSTER_PY) up

cluster-down: ## stop the local cluster and remove its state
	@if [ -x "$(PY)" ]; then $(CLUSTER_PY) down; else python3 hack/cluster/localcluster.py down; fi

cluster-status: venv ## which cluster processes run, and the KUBECONFIG
	$(CLUSTER_PY) status

test-cluster: venv ## cluster tests (tests/cluster) against the local control plane, or CLUSTER=kind
	SHOPRANK_CLUSTER_TESTS=1 CLUSTER='$(CLUSTER)' $(PY) -m pytest tests/cluster -p no:cacheprovider \
		-o addopts='-q -ra' -m cluster --durations=0 $(CLUSTER_TEST_ARGS)
