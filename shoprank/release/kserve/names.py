"""The names shoprank and KServe agree on: API group and version, annotations, labels, field managers, runtimes.

Why a module of constants: the promote step (`shoprank.release.kserve`), `make deploy` (`deploy/cli.py`) and the
tests must use the same strings (a field manager spelt differently is a different owner to the API server), and
`deploy/cli.py` wants them without loading the rest of the rollout. So this module imports nothing, not even
from shoprank, and everything else in `shoprank.release.kserve` takes its names from here.
"""

from __future__ import annotations

__all__ = [
    "API_VERSION",
    "AUTOSCALER_CLASS_ANNOTATION",
    "CANARY_FIELD",
    "DEPLOYMENT_MODES",
    "DEPLOYMENT_MODE_ANNOTATION",
    "DEPLOY_FIELD_MANAGER",
    "FIELD_MANAGER",
    "GROUP",
    "ISVC_POD_LABEL",
    "KIND",
    "KNATIVE",
    "KNATIVE_CLASS_ANNOTATION",
    "KNATIVE_HPA_CLASS",
    "LEGACY_MODES",
    "MANAGED_ANNOTATIONS",
    "MANAGED_LABELS",
    "MANAGED_MODEL_FIELDS",
    "MANAGED_PREDICTOR_FIELDS",
    "MANAGED_TRANSFORMER_FIELDS",
    "OPTIONAL_MODEL_FIELDS",
    "OPTIONAL_PREDICTOR_FIELDS",
    "PLURAL",
    "SHOPRANK_RUNTIME",
    "SOURCE_URI_ANNOTATION",
    "STANDARD",
    "TAG_ROUTING_ANNOTATION",
    "TRITON_RUNTIME",
    "VERSION",
    "normalize_deployment_mode",
]

# --- the InferenceService resource ---------------------------------------------------------------------------

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"

# --- field managers (server-side apply) ----------------------------------------------------------------------

FIELD_MANAGER = "shoprank-promote"  # the pipeline's promote step
DEPLOY_FIELD_MANAGER = "shoprank-deploy"  # `make deploy` applies the overlays with this manager

# --- serving runtimes ------------------------------------------------------------------------------------------

SHOPRANK_RUNTIME = "shoprank-ranker"  # the shoprank ServingRuntime of manifests/base
TRITON_RUNTIME = "kserve-tritonserver"  # KServe's stock ClusterServingRuntime for Triton

# --- deployment modes ------------------------------------------------------------------------------------------

STANDARD = "Standard"
KNATIVE = "Knative"
DEPLOYMENT_MODES = (STANDARD, KNATIVE)
# KServe < 0.16 names; KServe itself still accepts and normalises them.
LEGACY_MODES = {"RawDeployment": STANDARD, "Serverless": KNATIVE}

# --- annotations and labels ------------------------------------------------------------------------------------

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
KNATIVE_CLASS_ANNOTATION = "autoscaling.knative.dev/class"
KNATIVE_HPA_CLASS = "hpa.autoscaling.knative.dev"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
SOURCE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"  # on the predictor pods
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"  # KServe labels an InferenceService's pods with its name

# --- the fields the promote step owns --------------------------------------------------------------------------
# Only these are compared, patched and applied, so defaults the KServe webhook adds and fields other tools own
# are left alone. canaryTrafficPercent is handled on its own (see shoprank.release.kserve.plan).

MANAGED_ANNOTATIONS = (DEPLOYMENT_MODE_ANNOTATION, AUTOSCALER_CLASS_ANNOTATION, KNATIVE_CLASS_ANNOTATION)
MANAGED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
MANAGED_PREDICTOR_FIELDS = (
    "serviceAccountName", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling",
    "nodeSelector", "tolerations",
)
MANAGED_MODEL_FIELDS = (
    "modelFormat", "runtime", "storageUri", "args", "resources", "securityContext", "readinessProbe",
    "livenessProbe",
)
# Owned only where the desired object has them (the Triton variant): other profiles leave them to whoever
# set them (an overlay's scratch volume), so that a rerun stays a no-op.
OPTIONAL_PREDICTOR_FIELDS = ("volumes",)
OPTIONAL_MODEL_FIELDS = ("volumeMounts",)
# The transformer (Triton variant) is owned whole: compared whenever the desired or the live object has one.
MANAGED_TRANSFORMER_FIELDS = (
    "serviceAccountName", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling",
    "storageUris", "volumes", "containers",
)
CANARY_FIELD = "spec.predictor.canaryTrafficPercent"


def normalize_deployment_mode(mode: str) -> str:
    """`Standard` or `Knative`; the pre-0.16 names RawDeployment/Serverless are mapped to them."""
    mode = LEGACY_MODES.get(mode, mode)
    if mode not in DEPLOYMENT_MODES:
        raise ValueError(f"deployment mode must be one of {DEPLOYMENT_MODES}, not {mode!r}")
    return mode
