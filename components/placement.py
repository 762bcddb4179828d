"""Where the train step runs: GPU count, node selector and toleration, computed at run time from `use_gpu`."""

from typing import NamedTuple

from kfp import dsl

from components import COMPONENT_IMAGE

__all__ = ["train_placement"]


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train_placement(use_gpu: bool, gpu_count: int, gpu_node_label: str, gpu_taint: str) -> NamedTuple(
        "Placement", [("accelerator_limit", str), ("node_selector", dict), ("tolerations", list)]):
    """Where the train task runs: GPU count, node selector and toleration from the `use_gpu` switch.

    Computed at run time so that one DAG serves both (kfp.local cannot join If/Else outputs).

    Args:
        use_gpu: Train on a GPU node.
        gpu_count: GPUs for the train step when use_gpu.
        gpu_node_label: key=value (or key, meaning key=true) of the GPU nodes' label: the node selector.
        gpu_taint: The taint key of the GPU nodes the train step tolerates.
    """
    from collections import namedtuple

    out = namedtuple("Placement", ["accelerator_limit", "node_selector", "tolerations"])
    if not use_gpu:
        return out("0", {}, [])
    key, _, value = gpu_node_label.partition("=")
    return out(str(gpu_count), {key: value or "true"},
               [{"key": gpu_taint, "operator": "Exists", "effect": "NoSchedule"}])
