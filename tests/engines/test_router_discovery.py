"""Router discovery: the routing table from ServingPools and ModelInstances (endpoint, serving, drain,
routing weight, engine kind -> metric names), and pool load as the sum of fresh per-replica shares."""

from __future__ import annotations

import datetime
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from flywheel.engines.adapters import SGLangAdapter, VLLMAdapter
from flywheel.engines.router import Backend, Balancer, Pool, Router
from flywheel.engines.router.discovery import routing_table, routing_weight, sum_shares

SERVING = {"conditions": [{"type": "Serving", "status": "True"}]}


def _instance(name: str, **spec: object) -> dict[str, object]:
    annotations = spec.pop("annotations", {})
    status = spec.pop("status", {**SERVING, "endpoint": f"10.0.0.{len(name)}:8000"})
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"pool": "md-a", "role": "Active", **spec},
        "status": status,
    }


def test_routing_table_from_pools_and_instances() -> None:
    pools = [
        {"metadata": {"name": "md-a"}, "spec": {"requestClass": {"name": "ss", "mergedClasses": ["sm"]}}}
    ]
    instances = [
        _instance("a", engine={"kind": "sglang"}),
        _instance("bb", drain=True),
        _instance("ccc", role="Standby"),
        _instance("dddd", annotations={"flywheel.dev/routing-weight": "0.25"}, engine={"kind": "vllm"}),
        _instance("eeeee", status={"conditions": []}),  # no endpoint yet: not a backend
        _instance("f", pool="other"),
    ]
    (pool,) = routing_table(pools, instances, {"ccc": "http://127.0.0.1:9"})
    assert pool.classes == frozenset({"ss", "sm"})
    backends = {b.name: b for b in pool.backends}
    assert set(backends) == {"a", "bb", "ccc", "dddd"}
    assert backends["a"].url == "http://10.0.0.1:8000" and backends["ccc"].url == "http://127.0.0.1:9"
    assert {n: b.routable for n, b in backends.items()} == {
        "a": True,
        "bb": False,
        "ccc": False,
        "dddd": True,
    }
    assert isinstance(backends["a"].adapter, SGLangAdapter)
    assert isinstance(backends["dddd"].adapter, VLLMAdapter) and backends["dddd"].weight == 0.25
    assert backends["bb"].adapter is None  # no kind: the router's default


def test_routing_weight_reads_the_fault_controllers_annotation() -> None:
    def weight(value: str | None) -> float:
        annotations = {} if value is None else {"flywheel.dev/routing-weight": value}
        return routing_weight({"metadata": {"annotations": annotations}})

    assert weight(None) == 1.0
    assert weight("0.5") == 0.5
    assert weight("7") == 1.0 and weight("-1") == 0.0
    assert weight("nan") == 1.0 and weight("heavy") == 1.0


def test_a_lower_weight_takes_a_smaller_share_and_zero_none() -> None:
    full, light, off = (
        Backend("full", "u1", "p"),
        Backend("light", "u2", "p", weight=0.5),
        Backend("off", "u3", "p", weight=0.0),
    )
    balancer = Balancer()
    balancer.set_pools([Pool("p", frozenset({"ss"}), [full, light, off])])
    picks = []
    for _ in range(8):
        chosen = balancer.pick(balancer.pools["p"])
        chosen.in_flight += 1
        picks.append(chosen.name)
    assert "off" not in picks
    assert picks.count("full") > picks.count("light") >= 1


def test_pool_load_sums_fresh_replica_shares_and_drops_stale_ones() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)

    def share(rps: float, age_s: float) -> dict[str, object]:
        at = (now - datetime.timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {
            "requestsPerSecond": rps,
            "inputTokensPerSecond": 10 * rps,
            "outputTokensPerSecond": rps,
            "observedAt": at,
            "classes": {"ss": {"requestsPerSecond": rps / 2}, "sm": {"requestsPerSecond": rps / 2}},
        }

    shares = {
        "r-0": share(2.0, 1),
        "r-1": share(3.0, 5),
        "r-dead": share(50.0, 120),
        "r-bad": {"observedAt": "x"},
    }
    total, stale = sum_shares(shares, now, stale_after_s=30)
    classes = {"requestsPerSecond": 2.5, "inputTokensPerSecond": 0.0, "outputTokensPerSecond": 0.0}
    assert total == {
        "requestsPerSecond": 5.0,
        "inputTokensPerSecond": 50.0,
        "outputTokensPerSecond": 5.0,
        "classes": {"sm": classes, "ss": classes},  # per class too, for the energy brain
    }
    assert sorted(stale) == ["r-bad", "r-dead"]


async def test_the_router_reads_each_backends_queue_under_its_engines_metric_names() -> None:
    """An SGLang instance's queue is read from ``sglang:`` series, not vLLM's (which it does not have)."""
    text = (Path(__file__).parent / "samples" / "sglang.txt").read_text()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    router = Router("m", CollectorRegistry())  # default adapter: vLLM's names
    sglang, default = (
        Backend("s", url, "p", adapter=SGLangAdapter()),
        Backend("v", f"http://localhost:{port}", "p"),
    )
    router.set_pools([Pool("p", frozenset({"ss"}), [sglang, default])])
    try:
        await router.refresh()
    finally:
        await router.close()
        await runner.cleanup()
    expected = SGLangAdapter().parse_metrics(text).queue_depth
    assert expected > 0 and sglang.engine_queue == expected
    assert default.failed_at is None  # scraped fine: vLLM's names are just absent from SGLang's exposition
    assert default.engine_queue == 0.0
