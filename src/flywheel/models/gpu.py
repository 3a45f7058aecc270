"""GPU SKUs as data and the per-GPU power model shared by the simulator, the simulated NVML backend
and the controllers' predictions.

Stable interface (other packages rely on it): ``GPUSku``, ``SKUS``, ``H100_SXM``, ``A100_SXM``,
``gpu_power_watts(sku, sm_clock_mhz, utilization)``. The constants are calibrated in
``flywheel.sim.calibrate``; their sources are documented next to each value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPUSku:
    name: str
    memory_gib: int
    sm_clock_min_mhz: int  # lowest supported SM clock
    sm_clock_max_mhz: int  # highest supported SM clock (boost)
    serving_clock_min_mhz: int  # lowest clock worth using for serving
    clock_step_mhz: int
    memory_bandwidth_gbps: float  # GB/s, HBM
    bf16_tflops: float  # dense
    idle_watts: float
    board_limit_watts: float
    # Dynamic power at max clock and full utilisation, above idle. A share of it (HBM, memory
    # controllers, fabric) does not follow the SM clock; the rest grows ~ f^exponent (f x V^2 with
    # voltage falling with the clock).
    dynamic_watts_at_max: float
    power_clock_exponent: float
    clock_independent_fraction: float
    # Below this SM clock memory-bound decode starts to slow down (see perfmodel.decode_clock_factor).
    decode_knee_mhz: float

    def supported_clocks(self) -> list[int]:
        return list(range(self.sm_clock_min_mhz, self.sm_clock_max_mhz + 1, self.clock_step_mhz))

    def clamp_clock(self, mhz: int) -> int:
        return max(self.sm_clock_min_mhz, min(self.sm_clock_max_mhz, mhz))


# H100 SXM5 80GB: 700 W board limit, idle ~70-75 W (shared/data/SOURCES.md); 3.35 TB/s HBM3,
# ~989 TFLOPS dense BF16 (NVIDIA H100 datasheet); SM clocks 210-1980 MHz in 15 MHz steps
# (nvidia-smi -q -d SUPPORTED_CLOCKS).
H100_SXM = GPUSku(
    name="H100-80GB-SXM",
    memory_gib=80,
    sm_clock_min_mhz=210,
    sm_clock_max_mhz=1980,
    serving_clock_min_mhz=800,
    clock_step_mhz=15,
    memory_bandwidth_gbps=3350.0,
    bf16_tflops=989.0,
    idle_watts=72.0,
    board_limit_watts=700.0,
    # idle + dynamic = 632 W at full decode utilisation: ML.ENERGY H100 Llama-3.x-70B TP4 at batch ~900
    # draws 637 W per GPU (mlenergy_llm_configs.csv).
    dynamic_watts_at_max=560.0,
    power_clock_exponent=2.2,
    # 45% clock-independent makes decode energy/token bottom out near 1.1 GHz at ~27% below max clock,
    # matching throttLL'eM's sweet spot (+37.4% tokens/J, U-shaped below; shared/data/SOURCES.md).
    clock_independent_fraction=0.45,
    decode_knee_mhz=1100.0,
)

# A100 SXM4 80GB: 400 W board limit, ~2.0 TB/s HBM2e, 312 TFLOPS dense BF16 (NVIDIA A100 datasheet).
A100_SXM = GPUSku(
    name="A100-80GB-SXM",
    memory_gib=80,
    sm_clock_min_mhz=210,
    sm_clock_max_mhz=1410,
    serving_clock_min_mhz=800,
    clock_step_mhz=15,
    memory_bandwidth_gbps=2039.0,
    bf16_tflops=312.0,
    idle_watts=55.0,
    board_limit_watts=400.0,
    dynamic_watts_at_max=320.0,
    power_clock_exponent=2.2,
    clock_independent_fraction=0.45,
    # throttLL'eM (A100): -6.25% decode throughput at 1050 MHz -> knee 1000 MHz gives -5.8%.
    decode_knee_mhz=1000.0,
)

SKUS: dict[str, GPUSku] = {sku.name: sku for sku in (H100_SXM, A100_SXM)}


def gpu_power_watts(sku: GPUSku, sm_clock_mhz: float, utilization: float) -> float:
    """Board power of one GPU at an SM clock and a utilisation in [0, 1], capped at the board limit."""
    clock = min(max(sm_clock_mhz, sku.sm_clock_min_mhz), sku.sm_clock_max_mhz)
    util = min(max(utilization, 0.0), 1.0)
    scaled = float((clock / sku.sm_clock_max_mhz) ** sku.power_clock_exponent)
    share = sku.clock_independent_fraction + (1.0 - sku.clock_independent_fraction) * scaled
    dynamic = sku.dynamic_watts_at_max * util * share
    return min(sku.idle_watts + dynamic, sku.board_limit_watts)
