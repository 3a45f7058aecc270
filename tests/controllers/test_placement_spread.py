"""Among equal fits, a deployment's instances spread across nodes; best fit still comes first."""

from __future__ import annotations

from test_placement_product import node

from flywheel.controllers.resources.placement import PlacementRequest, place_all

H100 = "NVIDIA H100 80GB HBM3"


def test_equal_fits_go_to_the_node_with_fewest_of_the_deployment() -> None:
    # Three nodes with 4 free GPUs each: every domain fits a TP4 group equally well.
    nodes = [node(n, H100) for n in "abc"]
    used = [f"{n}-{i}" for n in "abc" for i in range(4)]
    requests = [PlacementRequest(f"i{k}", 4, None, "ns/llama") for k in range(3)]
    spread = place_all(requests, nodes, used, {"ns/llama": []}).placements
    assert sorted(p.node_name for p in spread.values() if p) == ["a", "b", "c"]
    # Existing instances count; other deployments' do not.
    one = place_all([PlacementRequest("n", 4, None, "ns/llama")], nodes, used, {"ns/llama": ["a", "b"]})
    assert one.placements["n"] is not None and one.placements["n"].node_name == "c"
    other = place_all([PlacementRequest("x", 4, None, "ns/other")], nodes, used, {"ns/llama": ["a", "b"]})
    assert other.placements["x"] is not None and other.placements["x"].node_name == "a"


def test_best_fit_comes_first_so_a_whole_domain_stays_free() -> None:
    nodes = [node("a", H100), node("b", H100)]
    requests = [PlacementRequest(f"i{k}", 4, None, "ns/llama") for k in range(2)]
    placed = place_all(requests, nodes, [], {"ns/llama": []}).placements
    assert [p.node_name for p in placed.values() if p] == ["a", "a"]  # b stays whole for a TP8 group
