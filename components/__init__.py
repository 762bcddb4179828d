"""Thin, typed KFP components over the shoprank library: artefacts in, artefacts out, nothing else.

Each is a lightweight component whose base image is the project's component image (built from the
repo's Dockerfile with shoprank installed), so the same definition runs under kfp.local's
SubprocessRunner and on a cluster. `import shoprank` happens inside each function body because only
the body is shipped in the compiled pipeline.
"""

import os

__all__ = ["COMPONENT_IMAGE"]

# The image every component runs in on a cluster; override it when compiling with the environment variable
# SHOPRANK_COMPONENT_IMAGE (`make deploy COMPONENT_IMAGE=...` does, see deploy/kfp_upload.py; `make compile
# COMPONENT_IMAGE=...` writes that pipeline to build/).
COMPONENT_IMAGE = os.environ.get("SHOPRANK_COMPONENT_IMAGE", "ghcr.io/shoprank/shoprank-components:0.1.0")
