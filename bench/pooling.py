"""Multi-model GPU pooling (issue #21): GPUs needed to serve N models at >= 99% per-request SLO
attainment, dedicated (each model its own minimal deployment) vs pooled (models sharing GPU groups
through sleep/wake switching, ``flywheel.controllers.pooling``), with switch costs and energy/token.

    PYTHONPATH=src .venv/bin/python bench/pooling.py [--models 30] [--zipf 1.0] [--seed 21]
        [--switch vllm-sleep|aegaeon] [--slo gap|deadline] [--pool tail|single]
        [--json bench/results/pooling.json]

Workload: ``flywheel.sim.pooling.multi_model_workload`` (the Azure conv + code hours split over the
models by a Zipf popularity). Causal split: per-model rates and the mean output length used to
assign models to groups are measured on minutes 0-20; every figure is on minutes 20-40.
The head (models with at least 1/N of the profile window's requests, or needing more than one
instance) keeps its dedicated deployment in both ways; the tail is pooled at the TP of its minimal
dedicated deployment.
``--switch aegaeon``: token-level switching with KV swapped to host (SWITCH_MODELS); ``--slo deadline``:
the looser token-deadline TBT rule (``flywheel.sim.pooling``), dedicated re-sized under it too;
``--pool single``: every model one instance serves is pooled; ``--ttft-scale``: sensitivity.
``tail_packing_8b``: the n least popular 8B tail models on one H100, n = 2, 3, ... while every one
meets >= 99%.
Minimal sizes are searched on the evaluated window itself (hindsight) for both ways alike:
dedicated = per model, the fewest GPUs (TP x instances, every supported TP) that meet >= 99% for
that model; pooled = per TP size, the fewest groups (max ``--max-models`` models each, every count
from ceil(models / max) up, greedy assignment by demand) on which every model of that size meets
>= 99%. Fleet energy: the cluster has the dedicated GPU count;
GPUs the pool leaves unallocated draw idle power.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.controllers.pooling import SwitchCost, assign_models, group_memory_bytes, must_stay_awake
from flywheel.controllers.pooling.assign import Demand, PoolTooSmall
from flywheel.controllers.pooling.decisions import SloRule
from flywheel.models.gpu import H100_SXM
from flywheel.models.perf import decode_step_ms, prefill_ms
from flywheel.sim.pooling import (
    TBT_MS,
    MultiModelWorkload,
    RunResult,
    dedicated_groups,
    kv_reserve_tokens,
    multi_model_workload,
    pooled_groups,
    pooled_model,
    simulate,
)

TARGET = 0.99
SKU = H100_SXM
# Stock: vLLM sleep level 1 (controllers.pooling.switchcost): a model with requests in flight is not
# switched out. Aegaeon (not what stock engines do): token-level switching, KV cache swapped to host,
# weights cached in host memory, fixed overheads -97% (``SwitchCost.aegaeon``).
SWITCH_MODELS = {  # name -> (switch cost, token-level preemption with KV swapped to host)
    "vllm-sleep": (SwitchCost(), False),
    "aegaeon": (SwitchCost.aegaeon(), True),
}


def demands(profile: MultiModelWorkload) -> list[Demand]:
    """A model's share of its group's time, from the profile window: its prefill work plus, while it
    has requests decoding (probability ~ rate x output x TBT/2, at most 1), one decode step per TBT
    round — models on a group cannot batch together, they take turns."""
    out = []
    f = SKU.sm_clock_max_mhz
    tbt_s = TBT_MS / 1000.0
    for idx, m in enumerate(profile.models):
        sub = profile.only(idx)
        if not len(sub.arrival_s):
            out.append(Demand(m.name, m.tp, 0.0))
            continue
        rate = len(sub.arrival_s) / profile.duration_s
        prompt = float(sub.prompt_tokens.mean())
        output = float(sub.output_tokens.mean())
        prefill_s = prefill_ms(m.profile, SKU, m.tp, int(prompt), f) / 1000.0
        active = min(1.0, rate * output * tbt_s / 2.0)
        step_s = decode_step_ms(m.profile, SKU, m.tp, 4, int(4 * (prompt + output / 2)), f) / 1000.0
        out.append(Demand(m.name, m.tp, rate * prefill_s + active * step_s / tbt_s))
    return out


def with_tp(wl: MultiModelWorkload, tps: dict[str, int]) -> MultiModelWorkload:
    models = tuple(dataclasses.replace(m, tp=tps.get(m.name, m.tp)) for m in wl.models)
    return dataclasses.replace(wl, models=models)


def dedicated(ev: MultiModelWorkload, mean_output: float, slo: SloRule, max_gpus: int = 32) -> dict[str, Any]:
    """Each model's minimal deployment: the fewest GPUs (TP x instances, smaller TP first among equal
    counts) meeting >= 99% for that model."""
    runs: list[RunResult] = []
    sizes: dict[str, int] = {}
    tps: dict[str, int] = {}
    misses: list[str] = []
    by_model: dict[str, RunResult] = {}
    for idx, m in enumerate(ev.models):
        options = sorted(
            ((tp, k) for tp in m.profile.supported_tp for k in range(1, max_gpus // tp + 1)),
            key=lambda x: (x[0] * x[1], x[0]),
        )
        run: RunResult | None = None
        for n, (tp, k) in enumerate(options):
            sub = with_tp(ev.only(idx), {m.name: tp})
            groups, placement = dedicated_groups(sub, {m.name: k}, mean_output)
            groups = {g: s for g, s in groups.items() if g.startswith(m.name + "#")}
            run = simulate(sub, groups, {m.name: placement[m.name]}, always_awake=True, slo=slo)
            last = n == len(options) - 1
            if run.met.mean() >= TARGET or last or len(sub.arrival_s) == 0:
                if len(sub.arrival_s) and run.met.mean() < TARGET:
                    misses.append(m.name)
                sizes[m.name], tps[m.name] = k, tp
                runs.append(run)
                by_model[m.name] = run
                break
    return {"sizes": sizes, "tps": tps, "runs": runs, "misses": misses, "by_model": by_model}


def reserves(profile: MultiModelWorkload) -> dict[str, int]:
    """Each model's KV reservation while awake, from the profile window."""
    out = {}
    for idx, m in enumerate(profile.models):
        sub = profile.only(idx)
        if not len(sub.arrival_s):
            out[m.name] = kv_reserve_tokens(m, 0.0, 0.0, 0.0, SKU)
            continue
        rate = len(sub.arrival_s) / profile.duration_s
        prompt, output = float(sub.prompt_tokens.mean()), float(sub.output_tokens.mean())
        out[m.name] = kv_reserve_tokens(m, rate, prompt, output, SKU)
    return out


def pooled(
    ev: MultiModelWorkload,
    profile: MultiModelWorkload,
    mean_output: float,
    max_models: int,
    switch: SwitchCost,
    tail: set[str],
    token_level: bool,
    slo: SloRule,
) -> dict[str, Any]:
    """The ``tail`` models pooled by TP size."""
    by_tp: dict[int, list[int]] = {}
    for idx, m in enumerate(ev.models):
        if m.name in tail:
            by_tp.setdefault(m.tp, []).append(idx)
    kv = reserves(profile)
    pinned, footprint = pin(profile, ev, mean_output, switch, kv)
    d = {
        x.model: dataclasses.replace(x, footprint_bytes=footprint[x.model], pinned=x.model in pinned)
        for x in demands(profile)
    }
    runs: list[RunResult] = []
    layout: dict[int, dict[str, str]] = {}
    misses: list[str] = []
    attempts: list[dict[str, Any]] = []
    for tp, members in sorted(by_tp.items()):
        names = [ev.models[i].name for i in members]
        sub = ev.of(members)
        tried: dict[int, tuple[RunResult, dict[str, str], float]] = {}

        def attempt(
            k: int,
            tp: int = tp,
            names: list[str] = names,
            members: list[int] = members,
            sub: MultiModelWorkload = sub,
            tried: dict[int, tuple[RunResult, dict[str, str], float]] = tried,
        ) -> float:
            if k not in tried:
                groups_tp = {f"tp{tp}-g{j}": tp for j in range(k)}
                try:
                    memory = dict.fromkeys(groups_tp, group_memory_bytes(SKU, tp))
                    assignment = assign_models(
                        [d[n] for n in names], groups_tp, max_models, memory_bytes=memory
                    )
                except PoolTooSmall:
                    return -1.0
                groups, placement = pooled_groups(
                    sub,
                    assignment,
                    mean_output,
                    switch,
                    kv_reserve=kv,
                    token_level=token_level,
                    slo=slo,
                    pinned=pinned,
                )
                run = simulate(sub, groups, placement, slo=slo)
                worst = float(run.attainment_by_model(len(ev.models))[members].min())
                tried[k] = (run, assignment, worst)
            return tried[k][2]

        # fewest groups meeting the target: every count from the lower bound up (attainment is not
        # monotone in k: the greedy assignment changes with it)
        lo, hi = max(math.ceil(len(names) / max_models), 1), len(names)
        for k in range(lo, hi + 1):
            if attempt(k) >= TARGET:
                hi = k
                break
        for k, (r, _, w) in sorted(tried.items()):
            attempts.append(
                {
                    "tp": tp,
                    "groups": k,
                    "models": len(names),
                    "worst_attainment": w,
                    "attainment": float(r.met.mean()),
                    "switches": len(r.switch_costs_s),
                    "switch_p50_s": float(np.percentile(r.switch_costs_s, 50)) if r.switch_costs_s else None,
                    "switch_p99_s": float(np.percentile(r.switch_costs_s, 99)) if r.switch_costs_s else None,
                }
            )
        run, assignment, worst = tried[hi]
        if worst < TARGET:
            by_model = run.attainment_by_model(len(ev.models))[members]
            misses += [n for n, a in zip(names, by_model, strict=True) if a < TARGET]
        runs.append(run)
        layout[tp] = assignment
    return {
        "runs": runs,
        "layout": layout,
        "misses": misses,
        "attempts": attempts,
        "pinned": sorted(pinned & tail),
    }


def pin(
    profile: MultiModelWorkload,
    ev: MultiModelWorkload,
    mean_output: float,
    switch: SwitchCost,
    kv: dict[str, int],
) -> tuple[frozenset[str], dict[str, float]]:
    """Models kept awake (a wake-up + prefill of their mean prompt, profile window, misses the
    tightest TTFT target) and every model's awake footprint."""
    tightest_s = float(ev.ttft_ms.min()) / 1000.0 if len(ev.ttft_ms) else 1.0
    pinned: set[str] = set()
    footprint: dict[str, float] = {}
    for idx, m in enumerate(profile.models):
        pm = pooled_model(m, SKU, mean_output, kv_reserve=kv[m.name])
        footprint[m.name] = pm.footprint_bytes
        sub = profile.only(idx)
        prompt = int(sub.prompt_tokens.mean()) if len(sub.arrival_s) else 1
        if must_stay_awake(pm, switch, tightest_s, prompt):
            pinned.add(m.name)
    return frozenset(pinned), footprint


def tail_packing(
    ev: MultiModelWorkload,
    profile: MultiModelWorkload,
    mean_output: float,
    switch: SwitchCost,
    token_level: bool,
    slo: SloRule,
    tail: set[str],
) -> dict[str, Any]:
    """How many of the least popular small (8B) tail models one H100 serves with every model at
    >= 99%: the n least popular on one group, n = 2, 3, ... until one misses."""
    share = profile.share()
    small = sorted(
        (
            i
            for i, m in enumerate(ev.models)
            if m.name in tail and m.tp == 1 and m.profile.name.endswith("8b")
        ),
        key=lambda i: (share[i], ev.models[i].name),
    )
    kv = reserves(profile)
    tried: list[dict[str, Any]] = []
    best = 1
    for n in range(2, len(small) + 1):
        members = small[:n]
        sub = ev.of(members)
        names = [ev.models[i].name for i in members]
        groups, placement = pooled_groups(
            sub,
            dict.fromkeys(names, "g0"),
            mean_output,
            switch,
            kv_reserve=kv,
            token_level=token_level,
            slo=slo,
        )
        run = simulate(sub, groups, placement, slo=slo)
        worst = float(run.attainment_by_model(len(ev.models))[members].min())
        costs = run.switch_costs_s
        tried.append(
            {
                "models": n,
                "share_of_requests": float(share[members].sum()),
                "worst_attainment": worst,
                "attainment": float(run.met.mean()),
                "switches": len(costs),
                "switch_p50_s": float(np.percentile(costs, 50)) if costs else None,
                "switch_p99_s": float(np.percentile(costs, 99)) if costs else None,
            }
        )
        if worst < TARGET:
            break
        best = n
    return {"models_per_gpu": best, "tried": tried}


def summary(runs: list[RunResult], n_models: int, fleet_gpus: int, duration_s: float) -> dict[str, Any]:
    met = np.concatenate([r.met for r in runs])
    model = np.concatenate([r.model for r in runs])
    hits = np.bincount(model, weights=met.astype(float), minlength=n_models)
    total = np.bincount(model, minlength=n_models)
    per_model = np.where(total > 0, hits / np.maximum(total, 1), 1.0)
    gpus = sum(r.gpus for r in runs)
    energy = sum(r.energy_j for r in runs)
    tokens = sum(r.tokens for r in runs)
    fleet_energy = energy + max(fleet_gpus - gpus, 0) * SKU.idle_watts * duration_s
    costs = [c for r in runs for c in r.switch_costs_s]
    statuses: dict[str, int] = {}
    for r in runs:
        for code, count in r.statuses.items():
            statuses[str(code)] = statuses.get(str(code), 0) + count
    return {
        "gpus": gpus,
        "requests": len(met),
        "attainment": float(met.mean()),
        "worst_model_attainment": float(per_model.min()),
        "models_below_99": int((per_model < TARGET).sum()),
        "tokens": tokens,
        "allocated_j_per_token": energy / max(tokens, 1),
        "fleet_j_per_token": fleet_energy / max(tokens, 1),
        "switches": len(costs),
        "switches_per_min": len(costs) / (duration_s / 60.0),
        "switch_p50_s": float(np.percentile(costs, 50)) if costs else None,
        "switch_p99_s": float(np.percentile(costs, 99)) if costs else None,
        "admission": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=30)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--max-models", type=int, default=8, help="max models per pooled group")
    parser.add_argument("--ttft-scale", type=float, default=1.0, help="multiply every TTFT target")
    parser.add_argument(
        "--switch",
        choices=sorted(SWITCH_MODELS),
        default="vllm-sleep",
        help="stock vLLM sleep level 1, or Aegaeon's token-level switching (KV swapped to host)",
    )
    parser.add_argument(
        "--slo",
        choices=["gap", "deadline"],
        default="gap",
        help="TBT rule: P99 of own inter-token gaps (Flywheel), or token deadlines (Aegaeon-like)",
    )
    parser.add_argument(
        "--pool",
        choices=["tail", "single"],
        default="tail",
        help="pool the tail (share < 1/N, one instance) or every model one instance serves",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.process_time()
    wl = multi_model_workload(args.models, args.zipf, args.seed)
    profile, ev = wl.window(0.0, 1200.0), wl.window(1200.0, 2400.0)
    ev = dataclasses.replace(ev, ttft_ms=ev.ttft_ms * args.ttft_scale)
    mean_output = float(profile.output_tokens.mean())
    ded = dedicated(ev, mean_output, args.slo)
    # pooled models keep the TP of their minimal dedicated deployment
    ev, profile = with_tp(ev, ded["tps"]), with_tp(profile, ded["tps"])
    # head (share >= 1/N in the profile window) keeps its dedicated deployment; the tail is pooled
    share = profile.share()
    tail = {
        m.name
        for i, m in enumerate(ev.models)
        if ded["sizes"][m.name] == 1  # one instance suffices
        and (args.pool == "single" or share[i] < 1.0 / args.models)
    }
    switch, token_level = SWITCH_MODELS[args.switch]
    pool = pooled(ev, profile, mean_output, args.max_models, switch, tail, token_level, args.slo)
    packing = tail_packing(ev, profile, mean_output, switch, token_level, args.slo, tail)
    head_runs = [r for name, r in ded["by_model"].items() if name not in tail]
    ded_gpus = sum(r.gpus for r in ded["runs"])
    ds = summary(ded["runs"], args.models, ded_gpus, ev.duration_s)
    ps = summary([*head_runs, *pool["runs"]], args.models, ded_gpus, ev.duration_s)
    groups: list[dict[str, Any]] = []
    for tp, assignment in sorted(pool["layout"].items()):
        for g in sorted(set(assignment.values())):
            members = sorted(m for m, x in assignment.items() if x == g)
            groups.append(
                {"group": g, "gpus": tp, "models": len(members), "models_per_gpu": len(members) / tp}
            )
    tail_gpus = sum(g["gpus"] for g in groups)
    tail_ded_gpus = sum(r.gpus for name, r in ded["by_model"].items() if name in tail)
    result = {
        "command": "PYTHONPATH=src .venv/bin/python bench/pooling.py "
        f"--models {args.models} --zipf {args.zipf} --seed {args.seed} --max-models {args.max_models} "
        f"--ttft-scale {args.ttft_scale:g} --switch {args.switch} --slo {args.slo} --pool {args.pool}",
        "window": "minutes 20-40 (assignment from minutes 0-20)",
        "dedicated": {**ds, "instances": ded["sizes"], "tp": ded["tps"], "misses": ded["misses"]},
        "pooled": {
            **ps,
            "groups": groups,
            "pinned": pool["pinned"],
            "misses": pool["misses"],
            "search": pool["attempts"],
        },
        "gpu_reduction": 1.0 - ps["gpus"] / max(ds["gpus"], 1),
        "head_models": sorted(set(ded["by_model"]) - tail),
        "tail_models": len(tail),
        "tail_gpus_dedicated": tail_ded_gpus,
        "tail_gpus_pooled": tail_gpus,
        "tail_gpu_reduction": 1.0 - tail_gpus / max(tail_ded_gpus, 1),
        "tail_models_per_gpu": len(tail) / max(tail_gpus, 1),
        "models_per_gpu_max": max((g["models_per_gpu"] for g in groups), default=0.0),
        "tail_packing_8b": packing,
        "cpu_s": time.process_time() - started,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
