from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from agentfakes import FakeSysfs

from flywheel.agents.cli import parse_engines
from flywheel.agents.health.engine import EngineTarget, HttpEngineProbe

VLLM = (
    "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 5\n"
    "# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total 4242\n"
)


def test_http_probe_reads_metrics_and_health() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(503 if request.url.host == "sick" else 200)
        return httpx.Response(200, text=VLLM)

    probe = HttpEngineProbe(transport=httpx.MockTransport(handler))
    try:
        ok = probe.read(EngineTarget("a", "http://fine:8000"))
        assert (ok.running, ok.generated_tokens, ok.healthy) == (5.0, 4242.0, True)
        assert probe.read(EngineTarget("b", "http://sick:8000")).healthy is False
    finally:
        probe.close()


def test_http_probe_unreachable_engine_is_data() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    probe = HttpEngineProbe(transport=httpx.MockTransport(handler))
    r = probe.read(EngineTarget("a", "http://gone:8000"))
    assert r.running is None and r.healthy is False and "metrics" in r.error


def test_parse_engines() -> None:
    assert parse_engines(["inst-0=http://127.0.0.1:8000/@12,13"]) == [
        EngineTarget("inst-0", "http://127.0.0.1:8000", (12, 13))
    ]
    with pytest.raises(ValueError, match="expected name="):
        parse_engines(["nourl"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_agent_serves_metrics_and_exits_cleanly_on_sigterm(sysfs: FakeSysfs) -> None:
    port = _free_port()
    exe = Path(sys.executable).with_name("flywheel")
    env = {**os.environ, "NODE_NAME": "node-cli"}
    args = [str(exe), "agent", "--simulated-gpus", "2", "--no-kube", "--no-device-plugin"]
    args += ["--sysfs-root", str(sysfs.root), "--metrics-port", str(port), "--interval", "0.2"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = ""
        for _ in range(150):
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
                if 'hostname="node-cli"' in body and "flywheel_gpu_power_usage_watts{" in body:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert "flywheel_gpu_power_usage_watts{" in body
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "clocks reset to defaults" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
