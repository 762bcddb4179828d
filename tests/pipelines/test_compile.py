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
    gate = tasks["condition-1"]
    assert "validate-Output" in gate["triggerPolicy"]["condition"]


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
    assert "promote" in spec["components"]["comp-condition-1"]["dag"]["tasks"]
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
    wired = spec["components"]["comp-condition-1"]["dag"]["tasks"]["promote"]["inputs"]["parameters"]
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
