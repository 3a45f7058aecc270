"""End to end with processes: three simulated 8B-class engines (``--enable-sleep-mode``) and the pooled
router (``python -m flywheel.engines.router.pooled_main``) on one GPU group. Every model is served
through the router, the switches happen on the engines' sleep/wake endpoints and show in the
router's metrics and pool status."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from flywheel.engines.openai import prompt_of_length
from waiting import eventually

# Qwen3-14B x 3: 29.6 GB of weights each, two fit awake in one H100's 73 GB with their KV reserves
MODELS = ("qwen-a", "qwen-b", "qwen-c")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def pool() -> Iterator[str]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        engine_urls = {}
        for name in MODELS:
            port = _free_port()
            command = [sys.executable, "-m", "flywheel.engines.simulated", "--model", name,
                       "--profile", "qwen3-14b", "--tensor-parallel-size", "1", "--host", "127.0.0.1",
                       "--port", str(port), "--time-scale", "10", "--enable-sleep-mode"]  # fmt: skip
            procs.append(subprocess.Popen(command))
            engine_urls[name] = f"http://127.0.0.1:{port}"
        router_port = _free_port()
        args = [sys.executable, "-m", "flywheel.engines.router.pooled_main", "--group", "g0", "--tp", "1",
                "--host", "127.0.0.1", "--port", str(router_port), "--time-scale", "10", "--ttft-ms", "60000",
                "--idle-sleep-s", "0"]  # fmt: skip
        for name, url in engine_urls.items():
            args += ["--model", f"{name}={url}@qwen3-14b"]
        procs.append(subprocess.Popen(args))
        for url in engine_urls.values():
            eventually(lambda url=url: _up(f"{url}/health"), what=f"engine {url}")
        router = f"http://127.0.0.1:{router_port}"
        eventually(lambda: _up(f"{router}/v1/models"), what="pooled router")
        yield router
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_three_pooled_models_served_through_the_router_with_switches(pool: str) -> None:
    with httpx.Client(timeout=60) as client:
        for round_ in range(2):
            for name in MODELS:
                body = {"model": name, "prompt": prompt_of_length(64), "max_tokens": 4}
                response = client.post(f"{pool}/v1/completions", json=body)
                assert response.status_code == 200, (round_, name, response.text)
                assert response.json()["model"] == name
        status = client.get(f"{pool}/flywheel/pool").json()
        metrics = client.get(f"{pool}/metrics").text
    assert status["modelCount"] == 3 and status["switches"] >= 3
    assert sum(1 for m in status["models"] if m["state"] == "Awake") <= 2  # memory holds two
    assert 'flywheel_pool_switches_total{group="g0"}' in metrics
    assert 'flywheel_pool_sleeps_total{group="g0"}' in metrics
