"""Release: the last stage, from a blessed model to a served one.

- `bundle`: the serving bundle (content-addressed version) and the local publish;
- `model_store`: versioned storage on s3://, gs://, pvc:// or a path, and the `LATEST` pointer;
- `kserve/`: the cluster promotion (InferenceService spec, plan, rollout; see `shoprank.release.kserve`).

Why a stage of its own: releasing needs none of the numerical stages. It imports the base modules and itself only,
neither TensorFlow nor numpy-heavy stages (`shoprank.data/features/modeling/scoring/evaluation`), so the promote
step and `make deploy` load in a moment. The subpackage imports nothing here: import the module you need.
"""

__all__ = ["bundle", "kserve", "model_store"]
