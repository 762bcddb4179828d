"""What `make deploy` / `make undeploy` were asked to do: the parsed command line, shared by `deploy.cli` (which
parses it and does the Kubernetes part) and `deploy.kfp_upload` (the Kubeflow Pipelines part).

Why its own module: both need the type, and `deploy.cli` calls into `deploy.kfp_upload`; with `Options` here
neither imports the other for it (they used to import each other).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoprank.release.kserve.profiles import DEFAULT_PROFILE

__all__ = ["BASE_NAMESPACE", "Options"]

BASE_NAMESPACE = "shoprank"  # the namespace the manifests are written for


@dataclass
class Options:
    """The command (check, deploy, undeploy) and its options, as `deploy.cli.parse_options` reads them."""

    command: str
    overlay: str = DEFAULT_PROFILE
    namespace: str = BASE_NAMESPACE
    context: str = ""
    serving_image: str = ""
    component_image: str = ""
    kfp_host: str = ""
    kfp_upload: bool = True
    create_run: bool = False
    model_root: str = ""
    run_params: dict[str, Any] = field(default_factory=dict)
    kfp_runner: str = ""
    kfp_namespace: str = ""
    dry_run: bool = False
    reset_inference_service: bool = False
    model_pvc: str = ""

    @property
    def uses_kfp(self) -> bool:
        """Whether this run talks to Kubeflow Pipelines (an upload that is not a dry run)."""
        return self.kfp_upload and not self.dry_run
