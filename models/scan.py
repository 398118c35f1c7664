"""Selective-scan (Mamba S6) kernels.

All backends compute, for every batch b, channel e and position t (state size N):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t         (h_{-1} = 0, h_t in R^N)
    y_t = (<h_t, C_t> + D * u_t) * silu(z_t)

with shapes u, delta, z: (B, E, L); A: (E, N); Bm, C: (B, L, N); D: (E,). ``delta`` is already
softplus-ed and ``A`` is already ``-exp(A_log)``. Output y: (B, E, L) in u's dtype.
``selective_scan_reference`` is the ground truth for every faster backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                             C: torch.Tensor, D: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sequential float32 scan, one step per token (the semantics of transformers' MambaMixer slow path)."""
    dtype = u.dtype
    u, delta, A, Bm, C, D, z = (t.float() for t in (u, delta, A, Bm, C, D, z))
    batch, channels, length = u.shape
    dA = torch.exp(delta.unsqueeze(-1) * A[None, :, None, :])           # (B, E, L, N)
    dBu = delta.unsqueeze(-1) * Bm[:, None, :, :] * u.unsqueeze(-1)     # (B, E, L, N)
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("ben,bn->be", h, C[:, t]))
    y = torch.stack(ys, dim=-1) + u * D[None, :, None]
    return (y * F.silu(z)).to(dtype)


ScanFn = "Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]"

SCANS = {"reference": selective_scan_reference}


def resolve_scan(name: str = "reference", device: "torch.device | str | None" = None):
    """Return the scan function for a backend name (``'auto'`` picks the fastest correct one for the device)."""
    if name == "auto":
        name = "reference"
    try:
        return SCANS[name]
    except KeyError:
        raise ValueError(f"unknown scan backend {name!r}; choose one of {sorted(SCANS) + ['auto']}") from None
