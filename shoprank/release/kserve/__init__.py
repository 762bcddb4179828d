"""The cluster promotion on KServe, one module per concern (lower layers first; each imports only those above it
in this list, the base modules and `shoprank.release`):

- `names`: API group and version, annotations, labels, field managers, runtime names (imports nothing);
- `spec`: `ServingSettings` and the desired InferenceService;
- `profiles`: the overlay profiles and `PromoteParams`, the one declaration of the `serving_*` parameters;
- `plan`: merge patches, server-side-apply bodies, rollout phases, the rollback spec, conflicts;
- `wait`: reading KServe's status and waiting for Ready;
- `smoke`: the smoke request;
- `client`: `KServeApi`, the only code that talks to the API server (kubernetes imported inside its methods);
- `rollout`: drives a plan; `promote_to_kserve` is the promote step.

Why split: the decisions stay pure functions tested without a cluster, and `deploy/cli.py` imports `names` and
`profiles` without loading the rest. This package's `__init__` imports none of them, for the same reason.
"""

__all__ = ["client", "names", "plan", "profiles", "rollout", "smoke", "spec", "wait"]
