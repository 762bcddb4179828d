"""shoprank: the domain library for e-commerce search ranking (no kfp, no kserve imports)."""

__version__ = "0.1.0"
