"""The Kubernetes API the promote step uses: read an InferenceService, server-side apply it, read its predictor.

Why on its own: it is the only code that talks to the API server, so the rollout's decisions stay plain functions
and the tests can drive the rollout through a recording stand-in (`InferenceServiceApi` is the Protocol they
implement). `KServeApi` uses the kubernetes client, imported inside its methods: importing this module loads
no Kubernetes library. How the API server answers these requests (apply semantics, field ownership, RBAC) is
tested against a real kube-apiserver in tests/cluster (`make test-cluster`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from shoprank.release.kserve.names import GROUP, ISVC_POD_LABEL, PLURAL, VERSION
from shoprank.release.kserve.plan import Conflict, parse_conflicts
from shoprank.release.kserve.wait import DeploymentUnreadable, pod_problems

__all__ = ["ApplyConflict", "InferenceServiceApi", "KServeApi"]


class ApplyConflict(Exception):
    """An apply refused with 409: fields another field manager owns (`conflicts`, from the API's Status)."""

    def __init__(self, conflicts: list[Conflict], message: str) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class InferenceServiceApi(Protocol):
    """What the rollout needs from the API. An implementation may also offer `predictor_pod_problems(namespace,
    name) -> list[str]` (KServeApi does): the rollout then says why pods are not Ready."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The InferenceService as JSON, or None when there is none."""
        ...

    def apply(self, body: Mapping[str, Any], *, field_manager: str, force: bool = False) -> dict[str, Any]:
        """Server-side apply `body` as `field_manager`; raises ApplyConflict on a 409."""
        ...

    def get_predictor_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        """The predictor Deployment as JSON; raises wait.DeploymentUnreadable when it cannot be read."""
        ...


class KServeApi:
    """InferenceService reads and server-side applies through the kubernetes client's ApiClient.

    Written against the real API (`/apis/serving.kserve.io/v1beta1/...` with `application/apply-patch+yaml`,
    `fieldManager`, `force`); the generated CustomObjectsApi cannot send an apply patch in kubernetes 30.1
    (it fixes the content type to merge patch), hence `call_api`. Exercised against kube-apiserver and KServe's
    controller in tests/cluster (`make test-cluster`).
    """

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    @classmethod
    def from_environment(cls, context: str | None = None) -> KServeApi:
        """In a pod: its ServiceAccount; elsewhere: the kubeconfig's (current or named) context."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(context=context)
        return cls(client.ApiClient())

    @staticmethod
    def _path(namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client import CustomObjectsApi
        from kubernetes.client.exceptions import ApiException

        try:
            return CustomObjectsApi(self.api_client).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, body: Mapping[str, Any], *, field_manager: str, force: bool = False) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        query = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        try:
            return self.api_client.call_api(
                self._path(meta["namespace"], meta["name"]), "PATCH", query_params=query,
                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                body=dict(body), response_type="object", auth_settings=["BearerToken"],
                _return_http_data_only=True)
        except ApiException as exc:
            if exc.status == 409:
                conflicts = parse_conflicts(exc.body)
                raise ApplyConflict(conflicts, f"apply conflicts: {exc.body}") from exc
            raise

    def get_predictor_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        from kubernetes.client import AppsV1Api
        from kubernetes.client.exceptions import ApiException

        try:
            deployment = AppsV1Api(self.api_client).read_namespaced_deployment(f"{name}-predictor", namespace)
        except ApiException as exc:
            if exc.status in (401, 403, 404):
                raise DeploymentUnreadable(f"HTTP {exc.status} {exc.reason}") from exc
            raise
        return self.api_client.sanitize_for_serialization(deployment)

    def predictor_pod_problems(self, namespace: str, name: str) -> list[str]:
        """`pod_problems` of the InferenceService's pods; [] when pods cannot be read (the pipeline runner's
        Role does not grant them: then the timeout alone is reported)."""
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException

        try:
            pods = CoreV1Api(self.api_client).list_namespaced_pod(namespace,
                                                                  label_selector=f"{ISVC_POD_LABEL}={name}")
        except ApiException as exc:
            if exc.status in (401, 403):
                return []
            raise
        return pod_problems(self.api_client.sanitize_for_serialization(pods).get("items") or [])
