"""The committed compiled pipeline is what the pipeline function compiles to (golden file); every parameter has
a description; the serving parameters of the pipeline and the promote component are the declared ones."""

import dataclasses
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from components.promote import promote
from pipelines.compile import COMPILED, compile_pipeline
from pipelines.shoprank_pipeline import shoprank_pipeline
from shoprank.release.kserve.profiles import PIPELINE_PREFIX, SERVING_PARAMETERS, PromoteParams


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
    (condition,) = [name for name in tasks if name.startswith("condition-")]  # numbered after the tune loops
    gate = tasks[condition]
    assert "validate-Output" in gate["triggerPolicy"]["condition"]
    assert "promote" in spec["components"][f"comp-{condition}"]["dag"]["tasks"]


def test_no_step_is_retried_by_kubeflow():
    """A retry policy cannot tell a refusal from a passing fault: no task has one (ingest and promote retry
    transient storage and cluster errors themselves, shoprank.errors.retry_transient)."""
    spec = list(yaml.safe_load_all(Path(COMPILED).read_text()))[0]

    def tasks(dag: dict) -> dict:
        found = dict(dag["tasks"])
        for task in dag["tasks"].values():
            inner = spec["components"][task["componentRef"]["name"]].get("dag")
            if inner:
                found |= tasks(inner)
        return found

    every = tasks(spec["root"]["dag"])
    assert {"ingest", "preprocess", "train", "evaluate", "optimize", "validate", "promote"} <= set(every)
    assert {name for name, task in every.items() if "retryPolicy" in task} == set()
    (condition,) = [name for name in spec["root"]["dag"]["tasks"] if name.startswith("condition-")]
    assert "promote" in spec["components"][f"comp-{condition}"]["dag"]["tasks"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"preset", "overrides", "data_source", "use_gpu", "model_root"} <= set(params)


def test_every_pipeline_parameter_has_a_description():
    """The Kubeflow UI shows these: they come from the Args section of the pipeline function's docstring."""
    spec = next(yaml.safe_load_all(Path(COMPILED).read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    missing = sorted(name for name, p in params.items() if not (p.get("description") or "").strip())
    assert not missing, f"pipeline parameters without a description (add them to Args:): {missing}"
    for name, component in spec["components"].items():  # and every input of every step
        for kind in ("parameters", "artifacts"):
            for arg, p in (component.get("inputDefinitions", {}).get(kind) or {}).items():
                if not arg.startswith("pipelinechannel--"):  # the condition's plumbing, not a step's input
                    assert (p.get("description") or "").strip(), f"{name}: input {arg} has no description"


# --- the serving parameters: declared once (PromoteParams), spelt out where KFP needs literal signatures ------


def _serving(signature: inspect.Signature) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.annotation, (type(p.default), p.default)) for p in signature.parameters.values()
            if p.name.startswith(PIPELINE_PREFIX)]


def _declared(*, pipeline_only: bool = False) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.type, (type(p.default), p.default)) for p in SERVING_PARAMETERS
            if p.in_pipeline or not pipeline_only]


def _text(description: str | None) -> str:
    return " ".join((description or "").split())  # docstring wrapping aside


def test_serving_parameters_are_the_declared_ones_in_the_same_order():
    assert [p.attribute for p in SERVING_PARAMETERS] == [f.name for f in dataclasses.fields(PromoteParams)]
    assert len(SERVING_PARAMETERS) == 16
    assert _serving(inspect.signature(promote.python_func)) == _declared()
    assert _serving(inspect.signature(shoprank_pipeline.pipeline_func)) == _declared(pipeline_only=True)
    # The two the pipeline does not expose (its YAML must not change here): the component keeps them.
    assert [p.name for p in SERVING_PARAMETERS if not p.in_pipeline] == ["serving_smoke_url",
                                                                         "serving_force_conflicts"]


def test_serving_parameter_descriptions_are_the_declared_ones():
    for component in (promote, shoprank_pipeline):
        inputs = component.component_spec.inputs
        for p in SERVING_PARAMETERS:
            if p.name in inputs or p.in_pipeline:
                assert _text(inputs[p.name].description) == p.description, (component.name, p.name)


def test_the_pipeline_passes_each_serving_parameter_to_promote_under_its_name():
    spec = next(yaml.safe_load_all(Path(COMPILED).read_text()))
    (condition,) = [name for name in spec["components"] if name.startswith("comp-condition-")]
    wired = spec["components"][condition]["dag"]["tasks"]["promote"]["inputs"]["parameters"]
    for p in SERVING_PARAMETERS:
        if p.in_pipeline:
            assert wired[p.name] == {"componentInputParameter": f"pipelinechannel--{p.name}"}, p.name
        else:
            assert p.name not in wired  # the component's default applies


def test_the_promote_component_hands_every_serving_parameter_to_the_rollout(tmp_path, monkeypatch):
    """Each serving_<name> argument reaches PromoteParams.<name>: set every one to a value that is not its
    default and look at what promote_to_kserve receives."""
    from shoprank.release.kserve import rollout

    seen: dict[str, Any] = {}

    def fake_promote_to_kserve(*args: Any, params: PromoteParams, **kwargs: Any) -> dict[str, Any]:
        seen["params"] = params
        return {"outcome": "promoted", "reason": "test"}

    monkeypatch.setattr(rollout, "promote_to_kserve", fake_promote_to_kserve)
    values = {str: "x", int: 7, bool: True}
    chosen = {p.attribute: values[p.type] for p in SERVING_PARAMETERS}
    assert all(value != p.default for p, value in zip(SERVING_PARAMETERS, chosen.values()))
    artefact = SimpleNamespace(path=str(tmp_path / "in"), metadata={})
    out = SimpleNamespace(path=str(tmp_path / "promotion.json"), metadata={})
    promote.python_func(model_root="s3://b/m", model_name="m", optimized_model=artefact, transform=artefact,
                        summary=artefact, promotion=out, deploy_target="kserve",
                        **{PIPELINE_PREFIX + name: value for name, value in chosen.items()})
    assert seen["params"] == PromoteParams(**chosen)
    assert out.metadata["outcome"] == "promoted"


# --- multi-worker training and the tune step --------------------------------------------------------------------


def test_the_tune_rungs_are_parallel_loops_before_the_final_training():
    from components.tune import RUNGS
    from shoprank.modeling.tune import RUNGS as LIBRARY_RUNGS

    assert RUNGS == LIBRARY_RUNGS
    spec = next(yaml.safe_load_all(Path(COMPILED).read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    loops = sorted(name for name in tasks if "parameterIterator" in tasks[name])
    assert len(loops) == RUNGS
    for name in loops:  # one tune-trial task per item of the rung's trial list
        body = spec["components"][tasks[name]["componentRef"]["name"]]["dag"]["tasks"]
        assert [t["componentRef"]["name"].rstrip("-0123456789") for t in body.values()] == ["comp-tune-trial"]
    rungs = [name for name in tasks if name.startswith("tune-rung")]
    assert len(rungs) == RUNGS - 1  # halving between loops
    assert set(loops) <= set(tasks["tune-select"]["dependentTasks"])  # every rung's results, for the record
    assert sorted(tasks["tune-select"]["inputs"]["parameters"]) == sorted(
        ["preset", "overrides", *[f"rung_{r}" for r in range(RUNGS)]])
    train = tasks["train"]
    assert "tune-select" in train["dependentTasks"]
    inputs = train["inputs"]["parameters"]
    assert inputs["tuned_overrides"]["taskOutputParameter"] == {"producerTask": "tune-select",
                                                                 "outputParameterKey": "overrides"}
    assert inputs["train_workers"]["componentInputParameter"] == "train_workers"
    for name in ("accelerator_limit", "node_selector", "tolerations"):
        assert inputs[name]["taskOutputParameter"]["producerTask"] == "train-placement", name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["train_workers"]["defaultValue"] == 1 and params["tune_trials"]["defaultValue"] == 0


def test_the_train_step_knows_its_image_and_mounts_the_training_claim_when_compiled_with_one(tmp_path):
    import os
    import subprocess
    import sys

    spec = next(yaml.safe_load_all(Path(COMPILED).read_text()))
    env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-train"]["container"]["env"]}
    assert env == {"SHOPRANK_COMPONENT_IMAGE": "ghcr.io/shoprank/shoprank-components:0.1.0"}
    out = tmp_path / "pvc.yaml"
    subprocess.run([sys.executable, "-m", "pipelines.compile", str(out)], check=True, capture_output=True,
                   env=dict(os.environ, SHOPRANK_TRAIN_PVC="train-claim"), cwd=Path(__file__).parents[2])
    docs = list(yaml.safe_load_all(out.read_text()))
    env = {e["name"]: e["value"] for e in docs[0]["deploymentSpec"]["executors"]["exec-train"]["container"]["env"]}
    assert env["SHOPRANK_TRAIN_PVC"] == "train-claim" and env["SHOPRANK_TRAIN_MOUNT"] == "/mnt/shoprank-train"
    mounts = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]["pvcMount"]
    assert mounts == [{"constant": "train-claim", "mountPath": "/mnt/shoprank-train",
                       "pvcNameParameter": {"runtimeValue": {"constant": "train-claim"}}}]
