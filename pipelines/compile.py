"""Compile the pipeline to YAML: `python -m pipelines.compile [out.yaml]`."""

from __future__ import annotations

import sys
from pathlib import Path

from kfp import compiler

from pipelines.shoprank_pipeline import shoprank_pipeline

COMPILED = Path(__file__).parent / "compiled" / "shoprank_pipeline.yaml"


def compile_pipeline(path: str | Path = COMPILED) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(shoprank_pipeline, package_path=str(path))
    return Path(path)


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else COMPILED))
