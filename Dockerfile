# syntax=docker/dockerfile:1
# The component image: every pipeline step runs in it (lightweight KFP components with this base image, whose
# command is `python3 -m kfp.dsl.executor_main ...`; `import shoprank` inside each step).
#
#   make images COMPONENT_IMAGE=registry.example.com/shoprank-components:0.1.0     (docker, podman or buildah)
#   docker build -t registry.example.com/shoprank-components:0.1.0 .             (the same, by hand)
#
# BASE_IMAGE: any Python 3.11 image with `python3 -m venv` (python:3.11-slim; `make base-image` builds a Debian
# bookworm one locally where no registry is reachable). Layers, most stable first: the venv and the user, the
# pinned dependencies (from pyproject.toml only), then the code; a code change rebuilds only the code layers.
# pip's settings and CA bundle come in as build secrets (hack/images/pip_install.py), never as a layer.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG EXTRAS=pipeline,deploy
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv --system-site-packages /opt/venv \
    && (getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --create-home shoprank)
COPY pyproject.toml hack/images/pip_install.py /opt/build/
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-ca --mount=type=cache,target=/root/.cache/pip \
    python3 /opt/build/pip_install.py /opt/build/pyproject.toml "${EXTRAS}"
# The code: installed into the venv from a copy that is then not on sys.path (the working directory is the user's
# home), so the installed modules are the ones imported.
COPY pyproject.toml README.md /opt/build/src/
COPY shoprank /opt/build/src/shoprank
COPY components /opt/build/src/components
COPY pipelines /opt/build/src/pipelines
COPY serving /opt/build/src/serving
RUN pip install --no-deps --no-build-isolation --no-index --no-cache-dir /opt/build/src && pip check \
    && rm -rf /opt/build/src/build /opt/build/src/*.egg-info
WORKDIR /home/shoprank
USER 1000:1000
