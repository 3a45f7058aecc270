"""One engine-step model: the simulator's kernel and the simulated engine server's scheduler
(``flywheel.engines.simulated.core.EngineCore``, driven here in virtual time, no wall clock) form
the same batches and take the same iteration times for the same request sequence and perf model."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from sim_policies import FixedPolicy

from flywheel.engines.simulated.core import EngineCore
from flywheel.engines.simulated.requests import SimRequest
from flywheel.engines.simulated.stats import EngineStats
from flywheel.engines.simulated.timing import PerfModelTiming
from flywheel.models import engine_step
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import LLAMA2_70B
from flywheel.sim.core.entities import SimInstance
from flywheel.sim.simulator import SimConfig, Simulator
from flywheel.sim.workloads import Workload

CHUNK, SEQS, CLOCK, TP = 512, 4, 1980, 8
Iteration = tuple[str, int, int, float]  # kind, decoding sequences, prompt tokens, duration (ms)


class _RecordingSimulator(Simulator):
    """The simulator, recording every iteration its instance ran (a decode block unfolded)."""

    iterations: list[Iteration]

    def _on_instance(self, inst: SimInstance) -> None:
        b = len(inst.running)
        if inst.phase == "mixed":
            self.iterations.append(("mixed", b, inst.k, inst.iter_ms))
        elif inst.phase == "decode":
            for i in range(inst.k):
                self.iterations.append(
                    ("decode", b, 0, inst.fixed_ms + inst.per_token_ms * (inst.ctx0 + b * i))
                )
        super()._on_instance(inst)


def _requests(n: int = 40, seed: int = 3) -> tuple[list[float], list[int], list[int]]:
    rng = np.random.default_rng(seed)
    # Bursts (slot limit, queueing), long prompts (several chunks) and arrivals inside decode blocks.
    gaps = rng.exponential(0.15, n) * rng.choice([0.05, 1.0, 4.0], n)
    arrivals = (1.0 + np.cumsum(gaps)).tolist()
    prompts = rng.integers(20, 1400, n).tolist()
    outputs = rng.integers(1, 90, n).tolist()
    return arrivals, prompts, outputs


def _simulate(
    arrivals: list[float], prompts: list[int], outputs: list[int]
) -> tuple[list[Iteration], list[float]]:
    workload = Workload(
        "parity",
        np.asarray(arrivals),
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
    )
    cfg = SimConfig(
        model=LLAMA2_70B, sku=H100_SXM, nodes=1, drain_s=600.0, sample_s=1000.0,
        prefill_chunk_tokens=CHUNK, max_num_seqs=SEQS,
    )  # fmt: skip
    sim = _RecordingSimulator(workload, FixedPolicy(tp=TP, clock=CLOCK), cfg)
    sim.iterations = []
    result = sim.run()
    assert not result.dropped.any()
    return sim.iterations, result.finish_s.tolist()


def _serve(
    arrivals: list[float], prompts: list[int], outputs: list[int]
) -> tuple[list[Iteration], list[float]]:
    """The engine server's stepping, its asyncio driver's decisions replayed in virtual time."""
    core = EngineCore(
        PerfModelTiming.named(LLAMA2_70B.name, H100_SXM.name, TP),
        EngineStats(),
        max_num_seqs=SEQS,
        prefill_chunk_tokens=CHUNK,
    )
    pending = deque(
        SimRequest(i, p, o, arrival_s=a, predicted_output_tokens=o, stream=False)
        for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs, strict=True))
    )
    requests = list(pending)
    iterations: list[Iteration] = []
    t = 0.0
    while pending or not core.idle:
        while pending and pending[0].arrival_s <= t:
            core.waiting.append(pending.popleft())
        if not core.batch:
            if not core.waiting:
                t = pending[0].arrival_s
                continue
            t = max(t, core.waiting[0].arrival_s)
        core.admit(t)
        plan = core.plan(CLOCK)
        n = plan.iterations
        if plan.kind == "decode" and pending and pending[0].arrival_s < t + plan.block_ms(n) / 1000.0:
            n = core.cut(plan, t, pending[0].arrival_s, n)  # what an arrival does to a running block
        if plan.kind == "mixed":
            iterations.append(("mixed", plan.batch, plan.prefill_tokens, plan.mixed_ms))
        else:
            b, fixed, per_token = plan.batch, plan.fixed_ms, plan.per_token_ms
            iterations += [("decode", b, 0, fixed + per_token * (plan.context0 + b * i)) for i in range(n)]
        t = core.complete(plan, t, n)
    return iterations, [r.done.result().finish_s for r in requests]


async def test_simulator_and_engine_server_run_the_same_iterations() -> None:
    arrivals, prompts, outputs = _requests()
    sim_iterations, sim_finish = _simulate(arrivals, prompts, outputs)
    server_iterations, server_finish = _serve(arrivals, prompts, outputs)
    kinds = {kind for kind, *_ in sim_iterations}
    assert kinds == {"mixed", "decode"}
    assert max(b for _, b, *_ in sim_iterations) == SEQS  # the slot limit was reached
    assert any(kind == "mixed" and b > 0 for kind, b, *_ in sim_iterations)  # decodes rode along
    assert [i[:3] for i in server_iterations] == [i[:3] for i in sim_iterations]
    assert [i[3] for i in server_iterations] == pytest.approx([i[3] for i in sim_iterations], rel=1e-12)
    assert server_finish == pytest.approx(sim_finish, abs=1e-9)


def test_admission_reserves_prompt_and_output_and_caps_pending_prefill() -> None:
    admit, wait, reject = (
        engine_step.Admission.ADMIT,
        engine_step.Admission.WAIT,
        engine_step.Admission.REJECT,
    )
    need = engine_step.kv_reservation(300, 100)
    assert engine_step.admission(need, 600, 1000, 2, 0, 512) is admit
    assert engine_step.admission(need, 601, 1000, 2, 0, 512) is wait  # KV reserved by the batch
    assert engine_step.admission(need, 601, 1000, 0, 0, 512) is reject  # never fits
    assert engine_step.admission(need, 0, 1000, 1, 512, 512) is wait  # a full chunk already pending
    assert engine_step.batch_limit(256, 8) == 8 and engine_step.batch_limit(4, None) == 4


def test_decode_block_is_the_sum_of_its_steps_and_cuts_at_the_step_in_progress() -> None:
    fixed, per_token, ctx, b = 20.0, 0.01, 1000, 4
    steps = [fixed + per_token * (ctx + b * i) for i in range(10)]
    assert engine_step.decode_block_ms(fixed, per_token, ctx, b, 10) == pytest.approx(sum(steps))
    elapsed = sum(steps[:3]) + 0.5 * steps[3]  # inside the 4th iteration
    assert engine_step.iterations_by(fixed, per_token, ctx, b, elapsed) == 4
    assert engine_step.iterations_by(fixed, per_token, ctx, b, sum(steps[:3])) == 3
    assert engine_step.prefill_chunk([300, 400], 512) == 512
    assert engine_step.split_chunk([300, 400, 50], 512) == [300, 212, 0]
