"""A deployment's instances spread across nodes (soft): one node's death must not take them all."""

from __future__ import annotations

from test_placement_product import node

from flywheel.controllers.resources.placement import PlacementRequest, place_all

H100 = "NVIDIA H100 80GB HBM3"


def test_a_deployments_instances_go_to_different_nodes_while_they_can() -> None:
    nodes = [node("a", H100), node("b", H100), node("c", H100)]
    requests = [PlacementRequest(f"i{k}", 4, None, "ns/llama") for k in range(3)]
    spread = place_all(requests, nodes, used=[], spread={"ns/llama": []}).placements
    assert sorted(p.node_name for p in spread.values() if p) == ["a", "b", "c"]
    # Without a spread group, best fit packs them: two on the first node.
    packed = place_all([PlacementRequest(f"i{k}", 4) for k in range(3)], nodes, used=[]).placements
    assert [p.node_name for p in packed.values() if p].count("a") == 2


def test_existing_instances_count_and_a_crowded_node_is_used_when_it_is_the_only_fit() -> None:
    nodes = [node("a", H100), node("b", H100, gpus=4)]
    # One instance of the deployment already runs on b: the next goes to a ...
    first = place_all([PlacementRequest("new", 4, None, "ns/llama")], nodes, [], {"ns/llama": ["b"]})
    assert first.placements["new"] is not None and first.placements["new"].node_name == "a"
    # ... and with b full, a takes both new ones (soft: better crowded than unplaced).
    used = [f"b-{i}" for i in range(4)]
    both = place_all(
        [PlacementRequest(f"n{k}", 4, None, "ns/llama") for k in range(2)], nodes, used, {"ns/llama": ["b"]}
    )
    assert [p.node_name for p in both.placements.values() if p] == ["a", "a"]
    # Other deployments' instances do not count.
    other = place_all([PlacementRequest("x", 4, None, "ns/other")], nodes, [], {"ns/llama": ["a", "a"]})
    assert other.placements["x"] is not None and other.placements["x"].node_name == "b"  # best fit
