"""Router: classification into pools, queue-depth balancing, retries on failure, streaming
pass-through, per-class counters on the passed-in registry."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from engine_fakes import MODEL, EngineFactory, RouterFactory
from prometheus_client import CollectorRegistry

from flywheel.controllers.routing.classify import ClassThresholds
from flywheel.controllers.routing.output_predictor import OutputLengthPredictor
from flywheel.engines.openai import CompletionRequest, prompt_of_length
from flywheel.engines.router import Backend, NoBackend, Pool, Router
from flywheel.engines.router.hold import HoldPolicy
from flywheel.engines.simulated import SimulatedEngineServer


def _backend(server: SimulatedEngineServer, pool: str, name: str) -> Backend:
    return Backend(name=name, url=server.url, pool=pool)


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _post(
    client: httpx.AsyncClient, url: str, prompt_tokens: int, max_tokens: int, **extra: object
) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt_of_length(prompt_tokens), "max_tokens": max_tokens, **extra}
    return await client.post(f"{url}/v1/completions", json=body, timeout=30)


def test_classification_uses_input_length_and_capped_prediction() -> None:
    router = Router(MODEL, CollectorRegistry(), thresholds=ClassThresholds((512, 2048), (64, 256)))
    # No history: the predictor's prior (256 tokens) is capped by max_tokens.
    assert router.classify(CompletionRequest(None, 100, 10, False, False))[0] == "ss"
    assert router.classify(CompletionRequest(None, 1000, 200, False, False))[0] == "mm"
    assert router.classify(CompletionRequest(None, 5000, 1000, False, False))[0] == "lm"
    # A learned distribution of long answers moves an unbounded request into the long-output class.
    for _ in range(30):
        router.predictor.observe(100, 900)
    assert router.classify(CompletionRequest(None, 100, 4096, False, False)) == ("sl", 900)


def test_pool_choice_prefers_own_class_then_merged_then_neighbour() -> None:
    router = Router(MODEL, CollectorRegistry())
    ss = Pool("p-ss", frozenset({"ss", "sm"}), [Backend("a", "http://a", "p-ss")])
    ll = Pool("p-ll", frozenset({"ll"}), [Backend("b", "http://b", "p-ll")])
    router.set_pools([ss, ll])
    assert router.pool_for("ss").name == "p-ss"
    assert router.pool_for("sm").name == "p-ss"  # merged into the ss pool
    assert router.pool_for("lm").name == "p-ll"  # nearest on the class grid
    assert router.pool_for("ms").name == "p-ss"
    ll.backends[0].draining = True
    assert router.pool_for("ll").name == "p-ss"  # no routable instance left in its own pool
    ss.backends[0].ready = False
    with pytest.raises(NoBackend):
        router.pool_for("ss")


def test_pick_balances_by_queue_depth() -> None:
    router = Router(MODEL, CollectorRegistry())
    a, b, c = (Backend(n, f"http://{n}", "p") for n in "abc")
    router.set_pools([Pool("p", frozenset({"ss"}), [a, b, c])])
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert router.pick(router.pools["p"]) is b
    b.engine_queue = 5  # the engine reports more work than this router sent (other routers)
    assert router.pick(router.pools["p"]) is c
    assert router.pick(router.pools["p"], exclude=[c]) is a


async def test_requests_land_in_their_class_pool(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    short, long_ = await engine_server(name="short"), await engine_server(name="long")
    server = await router_server(
        [
            Pool("short", frozenset({"ss"}), [_backend(short, "short", "s0")]),
            Pool("long", frozenset({"ls"}), [_backend(long_, "long", "l0")]),
        ]
    )
    async with httpx.AsyncClient() as client:
        small = await _post(client, server.url, 100, 8)
        big = await _post(client, server.url, 3000, 8)
    assert small.status_code == big.status_code == 200
    assert small.json()["flywheel"]["instance"] == "short"
    assert big.json()["flywheel"]["instance"] == "long"
    registry = server.router.registry
    assert (
        _sample(registry, "flywheel_router_requests_total", request_class="ss", pool="short", outcome="ok")
        == 1
    )
    assert _sample(registry, "flywheel_router_input_tokens_total", request_class="ls") == 3000
    assert _sample(registry, "flywheel_router_output_tokens_total", request_class="ss") == 8
    load = server.router.class_load()
    assert set(load) == {"ss", "ls"}
    assert load["ls"].input_tokens_per_second > load["ss"].input_tokens_per_second > 0


async def test_concurrent_load_spreads_over_instances(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engines = [await engine_server(name=f"e{i}") for i in range(3)]
    pool = Pool("p", frozenset({"ss"}), [_backend(e, "p", f"e{i}") for i, e in enumerate(engines)])
    server = await router_server([pool])
    async with httpx.AsyncClient() as client:
        responses = await asyncio.gather(*(_post(client, server.url, 50, 30) for _ in range(12)))
    served = [r.json()["flywheel"]["instance"] for r in responses]
    # Least queue depth: 12 concurrent requests over 3 idle instances give 4 each.
    assert sorted(served.count(f"e{i}") for i in range(3)) == [4, 4, 4]


async def test_draining_instance_gets_no_new_requests(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    a, b = await engine_server(name="a"), await engine_server(name="b")
    backends = [_backend(a, "p", "a"), Backend("b", b.url, "p", draining=True)]
    server = await router_server([Pool("p", frozenset({"ss"}), backends)])
    async with httpx.AsyncClient() as client:
        responses = await asyncio.gather(*(_post(client, server.url, 50, 3) for _ in range(4)))
    assert {r.json()["flywheel"]["instance"] for r in responses} == {"a"}


async def test_retries_once_on_a_failed_instance(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    dead, alive = await engine_server(name="dead"), await engine_server(name="alive")
    # The dead instance looks idle to the router at first, and is picked before the loaded one.
    backends = [_backend(dead, "p", "dead"), _backend(alive, "p", "alive")]
    server = await router_server([Pool("p", frozenset({"ss"}), backends)], refresh_s=3600)
    dead.engine.fail("GPU unavailable")
    server.router.pools["p"].backends[1].in_flight = 5
    async with httpx.AsyncClient() as client:
        response = await _post(client, server.url, 50, 4)
    assert response.status_code == 200
    assert response.json()["flywheel"]["instance"] == "alive"
    registry = server.router.registry
    assert _sample(registry, "flywheel_router_retries_total", reason="status") == 1
    assert server.router.pools["p"].backends[0].failed_at is not None  # out of rotation for a while


async def test_gives_up_after_the_attempt_limit(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engines = [await engine_server(name=n) for n in ("1", "2", "3", "4")]
    backends = [_backend(e, "p", e.instance) for e in engines]
    # No background refresh after the first: the router learns of the failures from the requests.
    server = await router_server([Pool("p", frozenset({"ss"}), backends)], refresh_s=3600)
    for engine in engines:
        engine.engine.fail("crashed")
    async with httpx.AsyncClient() as client:
        response = await _post(client, server.url, 50, 4)
    assert response.status_code == 502
    # Three attempts (the default policy): two retries, three instances marked failed, one untried.
    assert _sample(server.router.registry, "flywheel_router_retries_total", reason="status") == 2
    assert sum(b.failed_at is not None for b in server.router.backends()) == 3
    assert all(b.in_flight == 0 for b in server.router.backends())


async def test_connection_refused_counts_as_instance_failure(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    alive = await engine_server(name="alive")
    backends = [Backend("gone", "http://127.0.0.1:9", "p"), _backend(alive, "p", "alive")]
    server = await router_server([Pool("p", frozenset({"ss"}), backends)])
    server.router.pools["p"].backends[1].in_flight = 1
    async with httpx.AsyncClient() as client:
        response = await _post(client, server.url, 50, 4)
    assert response.status_code == 200


async def test_streaming_passes_through(engine_server: EngineFactory, router_server: RouterFactory) -> None:
    engine = await engine_server(name="e")
    server = await router_server([Pool("p", frozenset({"ss"}), [_backend(engine, "p", "e")])])
    body = {"model": MODEL, "prompt": prompt_of_length(20), "max_tokens": 7, "stream": True}
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", f"{server.url}/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert len(chunks) == 7
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert _sample(server.router.registry, "flywheel_router_output_tokens_total", request_class="ss") == 7


async def test_predictor_learns_from_completions(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e", time_scale=50.0)
    predictor = OutputLengthPredictor(min_samples=5)
    server = await router_server(
        [Pool("p", frozenset({"ss", "sm"}), [_backend(engine, "p", "e")])], predictor=predictor
    )
    async with httpx.AsyncClient() as client:
        await asyncio.gather(
            *(_post(client, server.url, 50, 500, flywheel={"output_tokens": 100}) for _ in range(6))
        )
    assert predictor.samples() == 6
    assert server.router.classify(CompletionRequest(None, 50, 4096, False, False)) == ("sm", 100)


async def test_bad_request_and_no_instances(router_server: RouterFactory) -> None:
    server = await router_server([], hold=HoldPolicy(max_wait_s=0))  # no hold: 503 at once
    async with httpx.AsyncClient() as client:
        bad = await client.post(f"{server.url}/v1/completions", content=b"not json")
        none = await _post(client, server.url, 10, 2)
        health = await client.get(f"{server.url}/health")
    assert bad.status_code == 400
    assert none.status_code == 503
    assert health.status_code == 503


def test_explicit_classes_route_by_declared_bounds() -> None:
    from flywheel.api.v1alpha1 import ModelDeploymentSpec
    from flywheel.engines.router import AutoClassifier, BoundsClassifier, classifier_for

    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "m", "parametersMillions": 70000, "weightSource": "hf://m/m"},
            "requestClasses": {
                "mode": "Explicit",
                "classes": [
                    {"name": "short", "maxInputTokens": 1024, "maxOutputTokens": 256},
                    {"name": "long", "maxInputTokens": 100000, "maxOutputTokens": 8192},
                ],
            },
        }
    )
    classifier = classifier_for(spec)
    assert isinstance(classifier, BoundsClassifier)
    assert classifier(500, 100) == "short"
    assert classifier(500, 300) == "long"  # predicted output beyond the short class
    assert classifier(2000, 10) == "long"
    assert classifier(10**6, 10) == "long"  # beyond every bound: the last class
    auto = classifier_for(spec.model_copy(update={"request_classes": type(spec.request_classes)()}))
    assert isinstance(auto, AutoClassifier)
    assert auto(100, 10) == "ss"


async def test_engine_receives_the_router_prediction(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    engine = await engine_server(name="e")
    server = await router_server([Pool("p", frozenset({"ss", "sm"}), [_backend(engine, "p", "e")])])
    seen: list[int] = []
    original = engine.engine.submit

    def spy(prompt: int, max_tokens: int, predicted: int | None = None, **kwargs: bool) -> object:
        seen.append(predicted or -1)
        return original(prompt, max_tokens, predicted, **kwargs)

    engine.engine.submit = spy  # type: ignore[method-assign,assignment]
    async with httpx.AsyncClient() as client:
        await _post(client, server.url, 50, 40)
    assert seen == [40]  # no history yet: the prior (256) capped by max_tokens


async def test_retry_moves_to_the_nearest_pool_when_the_pool_has_no_other_instance(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    dead, other = await engine_server(name="dead"), await engine_server(name="other")
    server = await router_server(
        [
            Pool("p-ss", frozenset({"ss"}), [_backend(dead, "p-ss", "dead")]),
            Pool("p-ls", frozenset({"ls"}), [_backend(other, "p-ls", "other")]),
        ],
        refresh_s=3600,
    )
    dead.engine.fail("GPU unavailable")
    async with httpx.AsyncClient() as client:
        response = await _post(client, server.url, 50, 4)
    assert response.status_code == 200
    assert response.json()["flywheel"]["instance"] == "other"
    assert _sample(server.router.registry, "flywheel_router_retries_total", reason="status") == 1


async def test_refresh_takes_unhealthy_instances_out_of_rotation(
    engine_server: EngineFactory, router_server: RouterFactory
) -> None:
    sick, well = await engine_server(name="sick"), await engine_server(name="well")
    server = await router_server(
        [Pool("p", frozenset({"ss"}), [_backend(sick, "p", "sick"), _backend(well, "p", "well")])]
    )
    sick.engine.fail("crashed")
    await server.router.refresh()
    backends = {b.name: b for b in server.router.backends()}
    assert backends["sick"].failed_at is not None
    assert backends["well"].failed_at is None
    assert server.router.pick(server.router.pools["p"]).name == "well"
