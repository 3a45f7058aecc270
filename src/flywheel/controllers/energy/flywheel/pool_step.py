"""Pool step of the ``flywheel`` policy (every ``pool_s``): TP, instances and planned clock per pool,
chosen jointly across pools under the GPU budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from flywheel.controllers.energy.cluster_plan import merge_loads
from flywheel.controllers.energy.flywheel.burst_step import BurstStep
from flywheel.controllers.energy.flywheel.shared import _EMPTY
from flywheel.controllers.energy.forecast import ClassLoad
from flywheel.controllers.energy.pool_plan import PoolConfig, PoolInput
from flywheel.controllers.protocol import (
    ClusterObservation,
    PoolState,
    PoolTarget,
)


class PoolStep(BurstStep):
    """The pool round: forecasts (with the profile's and the bursts' peaks) to pool targets."""

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        self._flush(obs.time_s)
        expected = {c: self.forecaster.expected(c) for c in self.forecaster.classes()}
        peaks = {c: self.forecaster.peak(c) for c in self.forecaster.classes()}
        pool_loads: dict[str, ClassLoad] = {}
        pool_peaks: dict[str, ClassLoad] = {}
        current = {p.name: p for p in obs.pools}
        for name, classes in self._pool_classes.items():
            if name not in current:
                continue
            ps = current[name]
            backlog = ps.load.queued / max(self.info.periods.pool_s, 1.0)
            # Rates from the pool's own arrivals (burstiness judged on the pool's total, not on
            # noisy small classes); token statistics from its classes.
            self.pool_forecaster.observe_window(
                name,
                round(ps.load.arrivals_rps * ps.load.window_s),
                0.0,
                0.0,
                0.0,
                duration_s=ps.load.window_s,
            )
            pool_rate = {
                id(expected): self.pool_forecaster.expected(name).requests_per_s,
                id(peaks): self.pool_forecaster.peak(name).requests_per_s,
            }
            for source, target in ((expected, pool_loads), (peaks, pool_peaks)):
                parts = [source[c] for c in classes if c in source]
                load = merge_loads(parts) if parts else _EMPTY
                target[name] = ClassLoad(
                    pool_rate[id(source)] + backlog,
                    load.mean_input_tokens or ps.load.mean_prompt_tokens,
                    load.mean_output_tokens or ps.load.mean_output_tokens,
                    load.p99_input_tokens or 3 * ps.load.mean_prompt_tokens,
                )
        # The offline profile's peak minute (declared by the user, or measured on history disjoint
        # from what is served; the initial plan is sized with it) counts as a window observed at the
        # start: it stays in the peak memory for the first ``peak_windows`` windows
        # (``bursty_peak_windows`` when the peak minute is over twice the mean rate: bursts recur),
        # so one quiet first minute does not shrink the pool.
        h = self._context().profile
        hold = self.forecaster.bursty_peak_windows if self.profile_bursty else self.forecaster.peak_windows
        if len(pool_peaks) == 1 and obs.time_s <= hold * self.info.periods.pool_s:
            name, pk = next(iter(pool_peaks.items()))
            if h.peak_minute_rps > pk.requests_per_s:
                pool_peaks[name] = replace(pk, requests_per_s=h.peak_minute_rps)
        # Sub-minute bursts (code: tens of req/s for seconds after quiet spells) are invisible in
        # minute rates; the pool keeps capacity for a share of the recent burst peak, held at max
        # clock. Idle instances at low clock cost ~idle power, far less than a missed burst.
        for name, pk in pool_peaks.items():
            burst = self.burst_share * self.burst_peak(name, obs.time_s)
            if burst > pk.requests_per_s:
                pool_peaks[name] = replace(pk, requests_per_s=burst)
        self._probe_prompt = {name: int(load.p99_input_tokens) for name, load in pool_loads.items()}
        return self._plan_pools(pool_loads, current, obs.total_gpus, peaks=pool_peaks)

    def _plan_pools(
        self,
        loads: dict[str, ClassLoad],
        current: Mapping[str, PoolState],
        total_gpus: int,
        force: set[str] | None = None,
        peaks: Mapping[str, ClassLoad] | None = None,
    ) -> list[PoolTarget]:
        ctx = self._context()
        h = ctx.profile
        inputs = []
        for name, observed in loads.items():
            load = observed
            if load.mean_input_tokens <= 0:
                load = ClassLoad(
                    load.requests_per_s, h.mean_prompt_tokens, h.mean_output_tokens, 3 * h.mean_prompt_tokens
                )
            ps = current.get(name)
            cur = None
            if ps is not None:
                cur = PoolConfig(ps.tp, ps.instances_ready + ps.instances_starting, ps.clock_mhz)
                # Instances added for a burst are not the pool's configuration: judge a change
                # against the planned one (a burst must not make a reshard look cheap).
                if name in self._burst_grown and name in self._planned:
                    cur = self._planned[name]
            inputs.append(
                PoolInput(
                    name=name,
                    load=load,
                    ttft_slo_ms=ctx.slo.ttft_ms,
                    tbt_slo_ms=ctx.slo.tbt_ms,
                    # A reshard waits until a burst has passed (it would drain instances serving it).
                    allowed_tp=(ps.tp,) if ps is not None and name in self._burst_grown else self._tps,
                    min_instances=1,
                    current=cur,
                    policy=self.energy_policy,
                    max_gpus=self._budgets.get(name),
                    peak_load=(peaks or {}).get(name),
                )
            )
        result = self.pool_controller.decide(inputs, total_gpus)
        force = force or set()
        targets = []
        for p in result.plans:
            self._planned[p.name] = p.config
            ps = current.get(p.name)
            if ps is not None and p.name in self._burst_grown:
                # Burst instances stay until the burst is over (``react`` then returns to this plan).
                if p.config.instances <= ps.instances_ready + ps.instances_starting:
                    continue
            elif not (p.changed or p.name in force):
                continue
            # New instances start at this clock until their first instance decision: one that
            # cannot carry a prefill chunk within the TBT target would miss gaps meanwhile.
            tp = p.config.tensor_parallel
            clock = max(p.config.clock_mhz, self._chunk_floor(tp, 1, 0))
            targets.append(PoolTarget(p.name, tp, p.config.instances, clock, p.reason))
        return targets
