"""Device / precision helpers for fast inference (no Beam, no EE).

- ``configure_numerics(device)``: TF32 off (the goldens' tolerance assumes true float32 matmuls).
- ``cpu_bf16_support()`` / ``resolve_precision(precision, device)``: ``'auto'`` picks bf16 only where it is
  faster (CUDA with bf16; CPUs with AMX or AVX512-BF16), fp32 elsewhere.
- ``autocast_for(precision, device)``: bf16 autocast, or nothing for fp32.
- ``keep_cpu_autocast_off(device)``: what the backbone does under a CPU bf16 autocast on a CPU without
  native bf16 (emulated bf16 GEMMs are ~20x slower than fp32 there): it keeps its projections in float32.
- ``batch_size_for_memory`` / ``accelerator_memory_bytes``: the GPU batch size that fits a device.
- ``CudaGraphForward``: one captured CUDA graph per batch size, so a GPU forward is not launch-bound.

Weights stay float32 (storing the projections in bf16 to skip autocast's per-forward weight casts was
measured: no gain on this CPU).

Determinism: on one device, with one torch build and thread count, the same input gives bit-identical
outputs whatever batch it is in (the scans have no atomics or thread-order-dependent sums; the fused CPU
kernel gives each (tile, channel block) to one thread; the backbone feeds its convolutions contiguous
tensors, see ``DynamicVisBackbone._forward``). Different thread counts or CPUs can change BLAS blocking,
hence float32 rounding (~1e-6, up to ~2e-5 after the tied blocks). Routing keeps the upstream rule:
softmax in float32, then ``torch.topk`` (sorted, largest). Routing weights that underflow to exactly 0.0
tie, and topk then picks among them by its own internal rule; CPU reproduces the official goldens, a GPU
kernel may pick other tied tokens (stage 2/3 of tied inputs then differ by up to ~5e-3, golden README),
deterministically for a given device. Under bf16 the gate still runs in float32, but its input carries
bf16 rounding from earlier blocks, so tokens near a selection boundary can change: expect cosine
~0.9999+, not bit equality, versus float32.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from typing import Any, Callable

import torch

LOGGER = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# Override of the CPU's bf16 detection (tests, or a CPU whose flags lie): 'native'/'1' or 'none'/'0'.
CPU_BF16_ENV = "DYNAMICVIS_CPU_BF16"
# What bf16 costs where it is emulated (issue 11: 2-core AMD EPYC with AVX2, arch b, 512 px, batch 4).
EMULATED_BF16_COST = "about 20x slower than float32 (0.105 vs 2.17 tiles/s on a 2-core AVX2 AMD EPYC)"


def configure_numerics(device: torch.device | str) -> None:
    """Float32 means float32: no TF32 in CUDA matmuls/convolutions."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


@functools.lru_cache(maxsize=None)
def _cpuinfo_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def cpu_bf16_support() -> str:
    """'amx_bf16', 'avx512_bf16' (native bf16 dot products) or 'none' (bf16 GEMMs emulated in software).

    From /proc/cpuinfo (torch 2.13 exposes only the vector ISA level, not these extensions); not Linux:
    'none'. ``DYNAMICVIS_CPU_BF16=none|native`` overrides the detection.
    """
    override = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if override in ("none", "0", "no", "false"):
        return "none"
    if override in ("native", "1", "yes", "true"):
        return "native (forced by DYNAMICVIS_CPU_BF16)"
    flags = _cpuinfo_flags()
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return flag
    return "none"


def cpu_has_native_bf16() -> bool:
    return cpu_bf16_support() != "none"


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision a run actually uses: 'fp32' or 'bf16'.

    'auto': bf16 on CUDA devices that support it and on CPUs with native bf16, else fp32. 'bf16' on a CPU
    without native bf16 warns (with the cost) and runs fp32: the backbone keeps its projections in float32
    under CPU autocast there (see ``keep_cpu_autocast_off``), so fp32 is what really runs and is recorded.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {PRECISIONS}")
    if precision == "fp32":
        return "fp32"
    device = torch.device(device)
    if device.type == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if precision == "bf16" and not supported:
            raise ValueError("precision='bf16' but this CUDA device has no bf16 support; use fp32 or auto")
        return "bf16" if supported else "fp32"
    if cpu_has_native_bf16():
        return "bf16"
    if precision == "bf16":
        warnings.warn(f"precision='bf16' on a CPU without native bf16 (no AVX512-BF16 or AMX): bf16 matmuls are "
                      f"emulated there, {EMULATED_BF16_COST}. Running float32 instead (recorded as "
                      f"precision=fp32); precision='auto' chooses this without a warning.", RuntimeWarning,
                      stacklevel=2)
    return "fp32"


def autocast_for(precision: str, device: torch.device | str, cache_enabled: bool = True):
    """``cache_enabled=False`` inside CUDA graph captures (autocast's weight-cast cache must not outlive one)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    if precision != "fp32":
        raise ValueError(f"precision={precision!r}: use 'fp32' or 'bf16' (resolve 'auto' with resolve_precision)")
    return contextlib.nullcontext()


_warned_emulated_autocast = False


def keep_cpu_autocast_off(device: torch.device):
    """Inside the backbone: under a CPU bf16 autocast on a CPU without native bf16, compute in float32.

    The autocast ops are the projections and convolutions, exactly the ones whose emulated bf16 kernels
    are the cliff; keeping them float32 keeps the model at its float32 speed (and float32 results).
    """
    global _warned_emulated_autocast
    if (device.type != "cpu" or not torch.is_autocast_enabled("cpu")
            or torch.get_autocast_dtype("cpu") != torch.bfloat16 or cpu_has_native_bf16()):
        return contextlib.nullcontext()
    if not _warned_emulated_autocast:
        _warned_emulated_autocast = True
        LOGGER.warning("bf16 autocast on a CPU without native bf16: DynamicVisBackbone keeps its projections in "
                       "float32 (emulated bf16 is %s)", EMULATED_BF16_COST)
    return torch.autocast("cpu", enabled=False)


# ---- GPU batch size -----------------------------------------------------------------------------------

# Peak activation memory of one arch-b 512 px tile in a float32 forward (a bound for bf16 too), with the
# allocator's slack; scaled by img_size^2 and by the arch's channel width. See benchmarks/gpu_check.sh,
# which prints the measured peak per batch size.
TILE_BYTES_B512 = 160 * 2**20
ARCH_WIDTH = {"b": 1.0, "l": 4 / 3}
MAX_GPU_BATCH = 256
# Dataflow accelerator types -> device memory (GiB), for choosing the batch size at launch.
ACCELERATOR_MEMORY_GIB = {
    "nvidia-tesla-t4": 16, "nvidia-tesla-p4": 8, "nvidia-tesla-p100": 16, "nvidia-tesla-v100": 16,
    "nvidia-l4": 24, "nvidia-tesla-a100": 40, "nvidia-a100-80gb": 80, "nvidia-h100-80gb": 80,
    "nvidia-h100-mega-80gb": 80, "nvidia-h200-141gb": 141,
}


def batch_size_for_memory(memory_bytes: int, img_size: int = 512, arch: str = "b",
                          reserved_bytes: int = 2 * 2**30, cap: int = MAX_GPU_BATCH) -> int:
    """Largest power-of-two batch whose activations fit in ~70% of ``memory_bytes - reserved_bytes``."""
    per_tile = TILE_BYTES_B512 * (img_size / 512) ** 2 * ARCH_WIDTH.get(arch, 1.0)
    usable = 0.7 * max(0, memory_bytes - reserved_bytes)
    batch = 1
    while batch * 2 <= cap and batch * 2 * per_tile <= usable:
        batch *= 2
    return batch


def accelerator_memory_bytes(accelerator: str | None) -> int | None:
    """Memory of a Dataflow accelerator ('nvidia-l4' or 'type:nvidia-l4;count:1;...'), None if unknown."""
    if not accelerator:
        return None
    kind = accelerator
    for part in accelerator.split(";"):
        if part.startswith("type:"):
            kind = part[len("type:"):]
    gib = ACCELERATOR_MEMORY_GIB.get(kind.strip().lower())
    return None if gib is None else gib * 2**30


def device_batch_size(device: torch.device, img_size: int, arch: str) -> int | None:
    """Forward batch size that fits a CUDA device's memory now; None on CPU (no limit)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return batch_size_for_memory(free, img_size, arch, reserved_bytes=0)


# ---- CUDA graphs ----------------------------------------------------------------------------------------

class CudaGraphForward:
    """``model(x)`` replayed from a CUDA graph captured once per batch size (the forward launches thousands
    of small kernels; replaying a graph costs one launch). Capture warms up on a side stream, as CUDA graphs
    require; all graphs share one memory pool (they never run concurrently). Routing is unchanged: the
    captured kernels are the eager ones (softmax, topk, gather), so replay gives the eager result bit for bit.
    Outputs are cloned out of the static buffers right after each replay (another size's replay may reuse
    a graph's intermediate memory; static inputs live outside the pool). At most ``max_graphs`` sizes are
    captured; other batch sizes, and any whose capture fails, run eagerly.
    """

    def __init__(self, model: torch.nn.Module, context: Callable[[], contextlib.AbstractContextManager],
                 max_graphs: int = 12, warmup: int = 2):
        self.model, self.context, self.max_graphs, self.warmup = model, context, max_graphs, warmup
        self.graphs: dict[tuple, tuple | None] = {}  # None: this size failed to capture, runs eagerly
        self.pool: Any = None  # torch.cuda.graph_pool_handle(), made at the first capture

    def _eager(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode(), self.context():
            return tuple(self.model(x))

    def _capture(self, x: torch.Tensor) -> tuple:
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._eager(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self._eager(static_in)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            if len(self.graphs) >= self.max_graphs:
                return self._eager(x)
            try:
                self.graphs[key] = self._capture(x)
            except RuntimeError as error:   # an op that cannot be captured: this size runs eagerly
                LOGGER.warning("CUDA graph capture failed for input %s (%s: %s); running it eagerly",
                               tuple(x.shape), type(error).__name__, error)
                self.graphs[key] = None
        entry = self.graphs[key]
        if entry is None:
            return self._eager(x)
        graph, static_in, static_out = entry
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return tuple(t.clone() for t in static_out)
