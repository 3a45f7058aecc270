"""CPU cost of the node agent: the real loop at 1 s with 8 simulated GPUs, 2 NICs, 2 IB ports and
one engine, GPUNode status reporting and the Prometheus exporter, measured as process CPU time over
wall time (percent of one core).

    .venv/bin/python bench/agent_cpu.py [--seconds 60] [--http-engine]

``--http-engine`` probes a real local HTTP server serving vLLM-style /metrics and /health instead of
an in-process reader, so the HTTP client cost is included.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flywheel.agents.agent import Agent, AgentConfig
from flywheel.agents.health.engine import EngineReading, EngineTarget
from flywheel.agents.nvml.simulated import SimulatedNvml

METRICS = (
    '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name="m"}} 4\n'
    '# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{model_name="m"}} {tokens}\n'
)


class Sink:
    def __init__(self) -> None:
        self.patches = 0

    def patch_status(self, node: str, status: dict[str, Any]) -> bool:
        self.patches += 1
        return True

    def emit_event(self, node: str, type_: str, reason: str, message: str) -> bool:
        return True


def build_sysfs(root: Path) -> None:
    for nic in ("eth0", "eth1"):
        d = root / "class" / "net" / nic
        (d / "device").mkdir(parents=True)
        (d / "operstate").write_text("up\n")
        (d / "carrier_changes").write_text("1\n")
    for dev in ("mlx5_0", "mlx5_1"):
        p = root / "class" / "infiniband" / dev / "ports" / "1"
        (p / "counters").mkdir(parents=True)
        (p / "state").write_text("4: ACTIVE\n")
        (p / "phys_state").write_text("5: LinkUp\n")
        (p / "counters" / "link_downed").write_text("0\n")


def engine_server() -> ThreadingHTTPServer:
    tokens = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            tokens[0] += 40
            body = (METRICS.format(tokens=tokens[0]) if self.path == "/metrics" else "ok").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--http-engine", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sys"
        build_sysfs(root)
        sim = SimulatedNvml(gpus=args.gpus, node_name="bench")
        for i in range(args.gpus):
            sim.set_utilization(i, 0.7)
        tokens = [0.0]

        def reader(t: EngineTarget) -> EngineReading:
            tokens[0] += 40
            return EngineReading(4, tokens[0], True)

        server = engine_server() if args.http_engine else None
        url = f"http://127.0.0.1:{server.server_address[1]}" if server else "http://engine"
        sink = Sink()
        agent = Agent(
            AgentConfig(node_name="bench", sysfs_root=root, interval_s=1.0),
            sim,
            sink=sink,
            engines=lambda: [EngineTarget("inst-0", url)],
            engine_reader=None if server else reader,
        )
        agent.start()
        time.sleep(3.0)  # warm-up
        rounds0, cpu0, wall0 = agent.rounds, time.process_time(), time.monotonic()
        time.sleep(args.seconds)
        rounds1, cpu1, wall1 = agent.rounds, time.process_time(), time.monotonic()
        hist = agent.exporter.loop_seconds.labels("bench")
        durations_sum = hist._sum.get()  # type: ignore[attr-defined]
        total_rounds = agent.rounds
        agent.stop()
        if server:
            server.shutdown()
    cpu_pct = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
    print(f"gpus={args.gpus} http_engine={args.http_engine} window={wall1 - wall0:.1f}s")
    print(f"rounds={rounds1 - rounds0} status_patches={sink.patches}")
    print(f"agent CPU = {cpu_pct:.2f}% of one core (goal < 2%)")
    print(f"mean round duration = {1000 * durations_sum / max(total_rounds, 1):.2f} ms")


if __name__ == "__main__":
    main()
