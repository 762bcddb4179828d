"""The committed compiled pipeline is what the pipeline function compiles to (golden file)."""

from pathlib import Path

import yaml

from pipelines.compile import COMPILED, compile_pipeline


def test_compiled_pipeline_matches_golden(tmp_path):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml")
    fresh_docs = list(yaml.safe_load_all(fresh.read_text()))
    assert fresh_docs == list(yaml.safe_load_all(Path(COMPILED).read_text())), (
        "pipelines/compiled/shoprank_pipeline.yaml is stale: run `make compile` and commit it")


def test_compiled_pipeline_carries_cluster_settings():
    docs = list(yaml.safe_load_all(Path(COMPILED).read_text()))
    spec = docs[0]
    executors = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"ghcr.io/shoprank/shoprank-components:0.1.0"}
    train = executors["exec-train"]["container"]["resources"]
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "train-placement-accelerator_limit" in str(train["accelerator"])  # set at run time from use_gpu
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert "nodeSelector" in platform and "tolerations" in platform
    # The promote step only runs inside the blessing condition.
    tasks = spec["root"]["dag"]["tasks"]
    assert "promote" not in tasks
    gate = tasks["condition-1"]
    assert "validate-Output" in gate["triggerPolicy"]["condition"]
    assert "promote" in spec["components"]["comp-condition-1"]["dag"]["tasks"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"preset", "overrides", "data_source", "use_gpu", "model_root"} <= set(params)
