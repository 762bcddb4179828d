#!/usr/bin/env bash
# A local kind cluster for shoprank: KServe in Standard mode (with cert-manager) and standalone Kubeflow
# Pipelines, both from their published, pinned manifests.
#
#   deploy/kind.sh up                 create the cluster (if absent) and install KServe and KFP
#   deploy/kind.sh load IMAGE...      load locally built images into the cluster's nodes
#   deploy/kind.sh down               delete the cluster
#
# Needs Docker and kind (https://kind.sigs.k8s.io), kubectl, curl, and network access to GitHub and the
# container registries. Not runnable on the project's own machines (no Docker engine): the same manifests
# are checked there against a real kube-apiserver instead (the cluster-test issue).
#
# Versions: KSERVE_VERSION (default v0.20.0, the CRDs tests/kserve_crds.py validates against) installs with
# KServe's own quick-install script for Standard mode (it brings cert-manager and helm/kustomize/yq binaries
# into a temporary folder); KFP_VERSION (default 2.17.3, matching kfp-server-api) installs the
# platform-agnostic standalone manifests.
set -euo pipefail

KIND_CLUSTER="${KIND_CLUSTER:-shoprank}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.20.0}"
KFP_VERSION="${KFP_VERSION:-2.17.3}"
KSERVE_INSTALL="https://raw.githubusercontent.com/kserve/kserve/${KSERVE_VERSION}/hack/setup/quick-install/kserve-standard-mode-full-install-with-manifests.sh"
KFP_MANIFESTS="github.com/kubeflow/pipelines/manifests/kustomize"

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "kind.sh: '$tool' is not installed (needed: $*)" >&2; exit 1; }
  done
}

need_docker() {
  need docker kind kubectl
  docker info >/dev/null 2>&1 || { echo "kind.sh: no Docker engine answers (docker info failed); kind needs one" >&2; exit 1; }
}

up() {
  need_docker
  need curl
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    echo "kind cluster $KIND_CLUSTER exists: reusing it"
  else
    kind create cluster --name "$KIND_CLUSTER" --wait 180s
  fi
  kubectl config use-context "kind-$KIND_CLUSTER"

  echo "== KServe $KSERVE_VERSION (Standard mode, cert-manager)"
  curl -fsSL "$KSERVE_INSTALL" | DEPLOYMENT_MODE=Standard bash
  kubectl wait --for=condition=Available --timeout=600s -n kserve deployment/kserve-controller-manager

  echo "== Kubeflow Pipelines $KFP_VERSION (standalone)"
  kubectl apply -k "$KFP_MANIFESTS/cluster-scoped-resources?ref=$KFP_VERSION"
  kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
  kubectl apply -k "$KFP_MANIFESTS/env/platform-agnostic?ref=$KFP_VERSION"
  kubectl wait --for=condition=Available --timeout=900s -n kubeflow deployment --all

  cat <<EOF

kind cluster "$KIND_CLUSTER" is ready (context kind-$KIND_CLUSTER). Next:
  make images COMPONENT_IMAGE=shoprank-components:dev SERVING_IMAGE=shoprank-serving:dev
  make kind-load COMPONENT_IMAGE=shoprank-components:dev SERVING_IMAGE=shoprank-serving:dev
  kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80 &
  make deploy OVERLAY=kind KFP_HOST=http://localhost:8080 KFP_RUNNER=kubeflow/pipeline-runner \\
       COMPONENT_IMAGE=shoprank-components:dev SERVING_IMAGE=shoprank-serving:dev
Runs need a model root KServe can read (s3:// with a MinIO, or pvc://): see README "Deploying".
EOF
}

load() {
  need_docker
  [ "$#" -gt 0 ] || { echo "kind.sh load: name the images (COMPONENT_IMAGE, SERVING_IMAGE)" >&2; exit 1; }
  for image in "$@"; do
    if [ -n "$image" ]; then kind load docker-image --name "$KIND_CLUSTER" "$image"; fi
  done
}

down() {
  need kind
  kind delete cluster --name "$KIND_CLUSTER"
}

case "${1:-}" in
  up) up ;;
  load) shift; load "$@" ;;
  down) down ;;
  *) echo "usage: deploy/kind.sh up | load IMAGE... | down" >&2; exit 2 ;;
esac
