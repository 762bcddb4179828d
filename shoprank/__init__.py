"""shoprank: the domain library for e-commerce search ranking (no kfp, no kserve imports).

Grouped by stage, importing forward only (`make lint` checks the rules in pyproject.toml):

    config, schema, errors, layout, telemetry   the base: settings, table schemas, exceptions, names on disk
    data        -> features -> modeling | scoring -> evaluation      the stages
    release                                                          beside them: bundle, model store, KServe
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
