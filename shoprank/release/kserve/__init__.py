"""Promotion to KServe: the desired InferenceService, the plan from the live object to it, the rollout through
the Kubernetes API (wait, smoke request, roll back). Imports only the base modules and the release package."""
