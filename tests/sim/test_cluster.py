"""GPU allocation within NVLink domains."""

from __future__ import annotations

from flywheel.sim.cluster import Cluster


def test_tp_groups_stay_within_one_node_and_best_fit() -> None:
    cluster = Cluster(nodes=2, gpus_per_node=8)
    a = cluster.allocate(4)
    b = cluster.allocate(2)
    assert a is not None and b is not None
    assert len({n for n, _ in a}) == 1 and len({n for n, _ in b}) == 1
    assert a[0][0] == b[0][0]  # best fit packs the partly used node
    c = cluster.allocate(8)
    assert c is not None and c[0][0] != a[0][0]
    assert cluster.allocate(4) is None  # 2 free GPUs left, no room for TP4
    cluster.release(a)
    assert cluster.allocate(4) is not None


def test_failed_gpus_are_never_allocated() -> None:
    cluster = Cluster(nodes=1, gpus_per_node=8)
    cluster.fail(0, 5)
    assert cluster.free_gpus == 7
    assert cluster.allocate(8) is None
    got = cluster.allocate(4)
    assert got is not None and (0, 5) not in got
    cluster.release([(0, 5)])
    assert cluster.free_gpus == 3
