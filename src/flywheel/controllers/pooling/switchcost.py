"""Cost of switching a model in and out of a GPU group (vLLM sleep mode level 1, SGLang memory
release/resume), from published measurements.

Mechanism (what a switch is on a real engine):

* vLLM (``vllm serve --enable-sleep-mode``; HTTP endpoints registered when the server runs with
  ``VLLM_SERVER_DEV_MODE=1``): ``POST /sleep?level=1`` copies the weights to pinned host memory and
  discards the KV cache; ``POST /wake_up`` copies them back and re-allocates the KV cache;
  ``GET /is_sleeping`` reports the state. The process, CUDA graphs, allocator and compiled kernels
  stay alive (docs.vllm.ai/en/v0.10.2/features/sleep_mode.html; blog.vllm.ai/2025/10/26/sleep-mode.html).
* SGLang (``--enable-memory-saver``): ``POST /release_memory_occupation`` and
  ``POST /resume_memory_occupation`` (sglang >= 0.4.6, ``test/srt/test_release_memory_occupation.py``).

Cost = fixed engine overhead + weight bytes / (TP x effective host<->device bandwidth); each GPU of a
TP group copies its own shard over its own PCIe link in parallel.

* Bandwidth: PCIe Gen5 x16 is 64 GB/s per direction raw (PCI-SIG, 32 GT/s x 16 lanes, 128b/130b);
  pinned ``cudaMemcpy`` reaches ~50-55 GB/s on H100 hosts. ``H2D_GBPS`` = 50 is a configured
  constant at the low end of that range.
* Fixed overhead: the vLLM blog measures level-1 wake-ups of 0.1-0.4 s for small models (Qwen3-0.6B,
  whose 1.2 GB copy takes ~0.03 s: the rest is engine overhead — allocator re-mapping, KV cache
  re-allocation) and up to ~6 s for 235B models on A100 (PCIe Gen4). ``WAKE_FIXED_S`` = 0.2 s.
* Sleep at level 1 copies the weights back to host (vLLM keeps no host copy while awake), so an
  eviction costs the same transfer the other way plus ``SLEEP_FIXED_S`` = 0.1 s.

Token-level switching after Aegaeon (SOSP'25; ``aegaeon()``), an engine mechanism the stock sleep
endpoints do not offer, used by the simulator to measure what it would buy:

* The KV cache of a model switched out with requests in flight is swapped to host memory and back,
  not discarded: ``kv_out_s`` / ``kv_in_s`` = KV bytes / (TP x the same PCIe bandwidth).
* Weights stay cached in host memory (Aegaeon's model cache), so a switch-out copies no weights
  (``keep_host_weights``), and a switch-in still pays weights / (TP x ``h2d_gbps``): the PCIe floor.
* Aegaeon reports that component reuse (engine initialised once, tokenizer/executor cached) and
  explicit memory management (self-managed GPU buffers, slab-allocated KV) cut its auto-scaling
  overhead by 97% (seed notes, shared/seeds/001 Aegaeon section). We apply that cut to the fixed
  overheads: wake 0.2 s x 0.03 = 6 ms, sleep 0.1 s x 0.03 = 3 ms — configured constants, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

H2D_GBPS = 50.0
D2H_GBPS = 50.0
WAKE_FIXED_S = 0.2
SLEEP_FIXED_S = 0.1
AEGAEON_OVERHEAD_CUT = 0.97  # Aegaeon's reported reduction of the auto-scaling overhead


@dataclass(frozen=True)
class SwitchCost:
    """Configured constants of one switch (see the module docstring for their sources)."""

    h2d_gbps: float = H2D_GBPS
    d2h_gbps: float = D2H_GBPS
    wake_fixed_s: float = WAKE_FIXED_S
    sleep_fixed_s: float = SLEEP_FIXED_S
    keep_host_weights: bool = False  # weights stay cached in host memory: switch-out copies none

    def __post_init__(self) -> None:
        if self.h2d_gbps <= 0 or self.d2h_gbps <= 0:
            raise ValueError("host<->device bandwidth must be positive")
        if self.wake_fixed_s < 0 or self.sleep_fixed_s < 0:
            raise ValueError("fixed switch overheads must be >= 0")

    def wake_s(self, weight_bytes: float, tp: int) -> float:
        """Seconds from ``/wake_up`` until the engine serves (weights back on the GPUs)."""
        return self.wake_fixed_s + weight_bytes / (max(tp, 1) * self.h2d_gbps * 1e9)

    def sleep_s(self, weight_bytes: float, tp: int) -> float:
        """Seconds of ``/sleep?level=1`` (weights offloaded to host, KV cache discarded)."""
        if self.keep_host_weights:
            return self.sleep_fixed_s
        return self.sleep_fixed_s + weight_bytes / (max(tp, 1) * self.d2h_gbps * 1e9)

    def kv_out_s(self, kv_bytes: float, tp: int) -> float:
        """Seconds to swap ``kv_bytes`` of KV cache to host memory (token-level switch-out)."""
        return kv_bytes / (max(tp, 1) * self.d2h_gbps * 1e9)

    def kv_in_s(self, kv_bytes: float, tp: int) -> float:
        """Seconds to swap ``kv_bytes`` of KV cache back onto the GPUs (token-level switch-in)."""
        return kv_bytes / (max(tp, 1) * self.h2d_gbps * 1e9)

    @classmethod
    def aegaeon(cls) -> SwitchCost:
        """Aegaeon-like engine (module docstring): host weight cache, fixed overheads cut 97%."""
        keep = 1.0 - AEGAEON_OVERHEAD_CUT
        return cls(
            wake_fixed_s=WAKE_FIXED_S * keep, sleep_fixed_s=SLEEP_FIXED_S * keep, keep_host_weights=True
        )
