# Cluster targets: deploy/undeploy (current kubectl context + Kubeflow Pipelines), a local kind cluster.
# Included by the Makefile (which defines PY, VENV and the venv target). The logic lives in deploy/ (Python)
# and deploy/kind.sh; these recipes only pass the variables on.
#
#   (make images, base-image, serve-container: mk/images.mk)
#   make deploy  OVERLAY=gpu KFP_HOST=http://localhost:8080 COMPONENT_IMAGE=... SERVING_IMAGE=... [CREATE_RUN=1 MODEL_ROOT=s3://...]
#   make deploy  OVERLAY=cpu KFP_UPLOAD=0 SERVING_IMAGE=...          (manifests only)
#   make deploy  OVERLAY=cpu KFP_UPLOAD=0 SERVING_IMAGE=... DRY_RUN=1 (server-side validation, no change)
#   make undeploy OVERLAY=gpu KFP_HOST=...
#   make kind-up && make images ... && make kind-load && make deploy OVERLAY=kind KFP_RUNNER=kubeflow/pipeline-runner ...

OVERLAY ?= gpu
NAMESPACE ?= shoprank
KFP_HOST ?=
KFP_UPLOAD ?= 1
CREATE_RUN ?= 0
COMPONENT_IMAGE ?=
SERVING_IMAGE ?=
MODEL_ROOT ?=
RUN_PARAMS ?= {}
KFP_RUNNER ?=
KFP_NAMESPACE ?=
MODEL_PVC ?=
DRY_RUN ?= 0
RESET_ISVC ?= 0
KIND_CLUSTER ?= shoprank
# Pinned: KServe as tests/support/kserve_crds.py (CRD schemas the manifests are validated against); KFP as the
# kfp-server-api the venv installs with kfp 2.17.3.
KSERVE_VERSION ?= v0.20.0
KFP_VERSION ?= 2.17.3

DEPLOY_ARGS = --overlay '$(OVERLAY)' --namespace '$(NAMESPACE)' --kfp-host '$(KFP_HOST)' \
	--kfp-upload '$(KFP_UPLOAD)' --component-image '$(COMPONENT_IMAGE)' --serving-image '$(SERVING_IMAGE)' \
	--kfp-runner '$(KFP_RUNNER)' --kfp-namespace '$(KFP_NAMESPACE)'

.PHONY: deploy deploy-check undeploy kind-up kind-load kind-down

deploy-check: venv ## check deploy's prerequisites against the current kubectl context, change nothing
	$(PY) -m deploy.cli check $(DEPLOY_ARGS)

deploy: venv ## apply manifests/overlays/$(OVERLAY) to the current context, upload the pipeline to KFP (see mk/deploy.mk)
	$(PY) -m deploy.cli deploy $(DEPLOY_ARGS) --create-run '$(CREATE_RUN)' --model-root '$(MODEL_ROOT)' \
		--run-params '$(RUN_PARAMS)' --dry-run '$(DRY_RUN)' --reset-inference-service '$(RESET_ISVC)' \
		--model-pvc '$(MODEL_PVC)'

undeploy: venv ## remove what deploy created (manifests, namespace if deploy made it, the KFP pipeline)
	$(PY) -m deploy.cli undeploy $(DEPLOY_ARGS)

kind-up: ## create a kind cluster with KServe (Standard mode, cert-manager) and Kubeflow Pipelines (needs Docker, kind)
	KIND_CLUSTER='$(KIND_CLUSTER)' KSERVE_VERSION='$(KSERVE_VERSION)' KFP_VERSION='$(KFP_VERSION)' bash deploy/kind.sh up

kind-load: ## load COMPONENT_IMAGE and SERVING_IMAGE into the kind cluster (no registry needed)
	KIND_CLUSTER='$(KIND_CLUSTER)' bash deploy/kind.sh load '$(COMPONENT_IMAGE)' '$(SERVING_IMAGE)'

kind-down: ## delete the kind cluster
	KIND_CLUSTER='$(KIND_CLUSTER)' bash deploy/kind.sh down
