from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def promote(model_root: str, model_name: str, optimized_model: Input[Model], transform: Input[Artifact],
            summary: Input[Artifact], promotion: Output[Artifact]):
    """Publish the blessed bundle to <model_root>/<model_name>/<version>/ (local promotion; the KServe
    roll-out is layered on top of this on a cluster)."""
    import json

    from shoprank.bundle import publish_bundle
    from shoprank.telemetry import stage

    with stage("promote"):
        record = publish_bundle(optimized_model.path, transform.path, summary.path, model_root, model_name)
    with open(promotion.path, "w") as fh:
        json.dump(record, fh, indent=2)
    promotion.metadata.update(record)
