"""The dev load generator retries as the OpenAI SDK does: connection errors go to another router
replica and are counted; a request is lost only when its last try fails."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from flywheel.devcluster.kubelet import profile_for
from flywheel.devcluster.replay import MAX_RETRIES, Outcome, ReplayPlan, replay
from flywheel.engines.simulated import SimulatedEngine, SimulatedEngineServer
from flywheel.engines.simulated.timing import PerfModelTiming

MODEL = "m"


def _dead_url() -> str:
    """A loopback port nobody listens on (a killed replica): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def replica() -> AsyncIterator[str]:
    """A stand-in for a router replica: an engine answering completions with the timings the
    load generator reads."""
    timing = PerfModelTiming.named(profile_for(70000), tensor_parallel=4)
    engine = SimulatedEngine(timing, lambda: 1980.0, time_scale=100.0)
    server = SimulatedEngineServer(engine, MODEL, instance="e")
    await server.start()
    yield server.url
    await server.stop()


def _plan(streamed: bool) -> ReplayPlan:
    return ReplayPlan([0.0], [16], [4], [streamed], 1.0)


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_refused_connection_is_retried_on_the_other_replica(replica: str, streamed: bool) -> None:
    outcomes: list[Outcome] = []
    await replay(_plan(streamed), lambda: [_dead_url(), replica], MODEL, outcomes.append)
    (outcome,) = outcomes
    assert outcome.ok, outcome.error
    assert outcome.retries == ("connection",)


async def test_a_request_is_lost_only_when_every_try_failed() -> None:
    outcomes: list[Outcome] = []
    await replay(_plan(False), lambda: [_dead_url()], MODEL, outcomes.append)
    (outcome,) = outcomes
    assert not outcome.ok and outcome.status == 599
    assert outcome.retries == ("connection",) * MAX_RETRIES
