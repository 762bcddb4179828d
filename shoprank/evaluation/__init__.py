"""Evaluation: ranking metrics, the evaluate step, the artefacts side by side (`compare`), the blessing checks
(`blessing`), the gate step that runs them (`gate`) and the HTML report (`report`). The top stage: it may
import every stage below it, and nothing imports it but the components.
"""

__all__ = ["blessing", "compare", "evaluate", "gate", "metrics", "report"]
