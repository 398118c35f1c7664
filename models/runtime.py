"""Device / precision helpers for fast inference (no Beam, no EE).

- ``configure_numerics(device)``: TF32 off (the goldens' tolerance assumes true float32 matmuls).
- ``autocast_for(precision, device)``: bf16 autocast, or nothing for fp32.
  Weights stay float32 (storing the projections in bf16 to skip autocast's per-forward weight casts was
  measured: no gain on this CPU).

Determinism: on one device, with one torch build and thread count, the same input gives bit-identical
outputs (the scans have no atomics or thread-order-dependent sums; the fused CPU kernel gives each
(tile, channel block) to one thread). Different batch sizes or thread counts can change BLAS blocking,
hence float32 rounding (~1e-6, up to ~5e-5 after the tied blocks). Routing keeps the upstream rule:
softmax in float32, then ``torch.topk`` (sorted, largest). Routing weights that underflow to exactly 0.0
tie, and topk then picks among them by its own internal rule; CPU reproduces the official goldens, a GPU
kernel may pick other tied tokens (stage 2/3 of tied inputs then differ by up to ~5e-3, golden README),
deterministically for a given device. Under bf16 the gate still runs in float32, but its input carries
bf16 rounding from earlier blocks, so tokens near a selection boundary can change: expect cosine
~0.9999+, not bit equality, versus float32.
"""
from __future__ import annotations

import contextlib

import torch


def configure_numerics(device: torch.device | str) -> None:
    """Float32 means float32: no TF32 in CUDA matmuls/convolutions."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def autocast_for(precision: str, device: torch.device | str):
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision={precision!r}: use 'fp32' or 'bf16'")
    return contextlib.nullcontext()
