"""Release: the serving bundle (`bundle`), the model store it is published to (`model_store`), and the KServe
promotion (`kserve/`). Imports only the base modules: no numpy-heavy stage, no TensorFlow, so the promote step
and `make deploy` stay light.
"""

__all__ = ["bundle", "kserve", "model_store"]
