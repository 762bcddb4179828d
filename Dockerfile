# The component image: every pipeline step runs in it (lightweight KFP components with this base image).
#   make images COMPONENT_IMAGE=registry.example.com/shoprank-components:0.1.0
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 TF_USE_LEGACY_KERAS=1
WORKDIR /opt/shoprank
COPY pyproject.toml README.md ./
COPY shoprank shoprank
COPY components components
COPY pipelines pipelines
COPY serving serving
RUN pip install ".[pipeline,deploy]" && useradd --uid 1000 --create-home shoprank
USER 1000
