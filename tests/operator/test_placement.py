"""Placement of TP groups on GPUNode inventory (pure)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.api.v1alpha1 import GPUNode
from flywheel.controllers.resources.placement import PlacementRequest, capacity, place


def node(name: str, gpus: int = 8, domains: int = 1, unhealthy: tuple[int, ...] = (), **spec: Any) -> GPUNode:
    per = gpus // domains
    return GPUNode.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"nodeName": name, **spec},
            "status": {
                "gpus": [
                    {
                        "uuid": f"{name}-{i}",
                        "index": i,
                        "product": "H100",
                        "memoryMiB": 80000,
                        "nvlinkDomain": f"{name}-d{i // per}",
                        "healthy": i not in unhealthy,
                    }
                    for i in range(gpus)
                ]
            },
        }
    )


def test_tp_group_stays_in_one_nvlink_domain() -> None:
    result = place([PlacementRequest("a", 4), PlacementRequest("b", 4)], [node("n", domains=2)], [])
    domains = {name: {int(u.split("-")[1]) // 4 for u in p.gpu_uuids} for name, p in result.items() if p}
    assert domains["a"] != domains["b"] and all(len(d) == 1 for d in domains.values())
    assert place([PlacementRequest("big", 8)], [node("n", domains=2)], [])["big"] is None


def test_skips_quarantined_and_unhealthy() -> None:
    nodes = [
        node("bad", quarantineNode=True, quarantineReason="xid"),
        node("sick", unhealthy=(0,), quarantinedGPUs=[{"uuid": "sick-1", "reason": "ecc"}]),
    ]
    result = place([PlacementRequest("a", 4), PlacementRequest("b", 2), PlacementRequest("c", 1)], nodes, [])
    used = [u for p in result.values() if p for u in p.gpu_uuids]
    assert not any(u.startswith("bad") for u in used)
    assert "sick-0" not in used and "sick-1" not in used
    assert result["a"] is not None and result["b"] is not None and result["c"] is None  # 6 usable GPUs


def test_existing_placements_are_kept_and_best_fit_preserves_whole_domains() -> None:
    nodes = [node("n1"), node("n2")]
    used = ["n1-0", "n1-1"]  # an existing instance keeps these
    result = place([PlacementRequest("small", 2), PlacementRequest("big", 8)], nodes, used)
    assert result["big"] is not None and result["big"].node_name == "n2"
    assert result["small"] is not None and result["small"].node_name == "n1"
    assert not set(result["small"].gpu_uuids) & set(used)
    assert capacity(nodes, used, 2) == 3 + 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=12),
    st.integers(min_value=1, max_value=4),
    st.sampled_from([1, 2]),
)
def test_never_shares_a_gpu_or_crosses_a_domain(tps: list[int], nodes: int, domains: int) -> None:
    inventory = [node(f"n{i}", domains=domains) for i in range(nodes)]
    result = place([PlacementRequest(f"i{k}", tp) for k, tp in enumerate(tps)], inventory, [])
    gpus = [u for p in result.values() if p for u in p.gpu_uuids]
    assert len(gpus) == len(set(gpus))
    for k, tp in enumerate(tps):
        p = result[f"i{k}"]
        if p is not None:
            assert len(p.gpu_uuids) == tp
            assert len({int(u.split("-")[1]) // (8 // domains) for u in p.gpu_uuids}) == 1
    # Determinism: the same input gives the same answer.
    assert place([PlacementRequest(f"i{k}", tp) for k, tp in enumerate(tps)], inventory, []) == result
