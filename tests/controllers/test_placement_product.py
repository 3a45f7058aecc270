"""Placement respects the deployment's ``gpu.product`` and says why a request stays unplaced."""

from __future__ import annotations

import pytest

from flywheel.api.v1alpha1 import GPUNode, ModelDeploymentSpec, reasons
from flywheel.controllers.resources.placement import (
    PlacementRequest,
    capacity,
    place,
    place_all,
    product_matches,
    usable_gpus,
)


def node(name: str, product: str, gpus: int = 8, unhealthy: bool = False) -> GPUNode:
    return GPUNode.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"nodeName": name},
            "status": {
                "gpus": [
                    {
                        "uuid": f"{name}-{i}",
                        "index": i,
                        "product": product,
                        "memoryMiB": 81559,
                        "nvlinkDomain": f"{name}-d0",
                        "healthy": not unhealthy,
                    }
                    for i in range(gpus)
                ]
            },
        }
    )


# What NVML's nvmlDeviceGetName reports on each board, and the simulated backend's spelling.
@pytest.mark.parametrize(
    ("wanted", "reported", "expected"),
    [
        ("H100-80GB-SXM", "NVIDIA H100 80GB HBM3", True),  # H100 SXM5
        ("H100-80GB-SXM", "NVIDIA H100-80GB-SXM", True),  # agents/nvml/simulated.py
        ("h100 80gb sxm", "NVIDIA H100 80GB HBM3", True),
        ("H100-80GB-SXM", "NVIDIA H100 PCIe", False),
        ("H100-80GB-SXM", "NVIDIA H100 NVL", False),
        ("H100", "NVIDIA H100 PCIe", True),  # a bare family name takes any board
        ("H100", "NVIDIA GH100", False),  # whole tokens only
        ("A100-80GB-SXM", "NVIDIA A100-SXM4-80GB", True),
        ("A100-80GB-SXM", "NVIDIA A100-SXM4-40GB", False),
        ("A100-80GB-SXM", "NVIDIA A100 80GB PCIe", False),
        ("H200-141GB-SXM", "NVIDIA H200", True),
        ("H200-141GB-SXM", "NVIDIA H200 NVL", False),
        ("H100-80GB-SXM", "NVIDIA A100-SXM4-80GB", False),
        ("-", "NVIDIA H100 80GB HBM3", False),  # no tokens: matches nothing
    ],
)
def test_product_names_match_after_normalising(wanted: str, reported: str, expected: bool) -> None:
    assert product_matches(wanted, reported) is expected


def test_only_gpus_of_the_deployments_product_are_candidates() -> None:
    product = ModelDeploymentSpec.model_validate(
        {"model": {"name": "m", "parametersMillions": 70000, "weightSource": "hf://m/m"}}
    ).gpu.product  # the default, H100-80GB-SXM
    # The A100 node is the better fit (fewer GPUs) but the wrong product.
    nodes = [node("a100", "NVIDIA A100-SXM4-80GB", gpus=4), node("h100", "NVIDIA H100 80GB HBM3")]
    result = place([PlacementRequest("x", 4, product)], nodes, [])
    assert result["x"] is not None and result["x"].node_name == "h100"
    anywhere = place([PlacementRequest("x", 4)], nodes, [])["x"]
    assert anywhere is not None and anywhere.node_name == "a100"
    assert [u for _, u, _ in usable_gpus(nodes[0], product)] == []
    assert capacity(nodes, [], 4, product) == 2 and capacity(nodes, [], 4) == 3


def test_a_product_no_node_has_is_unplaced_with_its_own_reason() -> None:
    nodes = [node("a100", "NVIDIA A100-SXM4-80GB")]
    result = place_all([PlacementRequest("x", 4, "H100-80GB-SXM")], nodes, [])
    assert result.placements == {"x": None}
    why = result.unplaced["x"]
    assert why.reason == reasons.GPU_PRODUCT_UNAVAILABLE
    assert "H100-80GB-SXM" in why.message and "NVIDIA A100-SXM4-80GB" in why.message


def test_a_product_that_exists_but_is_busy_or_unhealthy_is_insufficient_gpus() -> None:
    nodes = [
        node("h100", "NVIDIA H100 80GB HBM3", gpus=4),
        node("sick", "NVIDIA H100 80GB HBM3", unhealthy=True),
    ]
    result = place_all(
        [PlacementRequest("x", 4, "H100-80GB-SXM"), PlacementRequest("y", 4, "H100-80GB-SXM")], nodes, []
    )
    assert result.placements["x"] is not None and result.placements["y"] is None
    assert result.unplaced["y"].reason == reasons.INSUFFICIENT_GPUS
    assert "x" not in result.unplaced


def test_mixed_products_share_no_gpu() -> None:
    nodes = [node("h100", "NVIDIA H100 80GB HBM3", gpus=4), node("a100", "NVIDIA A100-SXM4-80GB", gpus=4)]
    result = place(
        [PlacementRequest("h", 4, "H100-80GB-SXM"), PlacementRequest("a", 4, "A100-80GB-SXM")], nodes, []
    )
    assert result["h"] is not None and result["h"].node_name == "h100"
    assert result["a"] is not None and result["a"].node_name == "a100"
