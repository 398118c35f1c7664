"""Selective-scan (Mamba S6) kernels.

All backends compute, for every batch b, channel e and position t (state size N):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t         (h_{-1} = 0, h_t in R^N)
    y_t = (<h_t, C_t> + D * u_t) * silu(z_t)

with shapes u, delta, z: (B, E, L); A: (E, N); Bm, C: (B, L, N); D: (E,). ``delta`` is already
softplus-ed and ``A`` is already ``-exp(A_log)``. Output y: (B, E, L) in u's dtype.
``selective_scan_reference`` is the ground truth for every faster backend.

Backends (chosen by name through :func:`resolve_scan`):

- ``reference``: one recurrence step per token, like transformers' MambaMixer slow path (slow).
- ``chunked``: pure PyTorch, CPU and GPU. Chunk-parallel recurrence: the sequence is cut into chunks of
  ``T`` tokens, all chunks advance together for T steps from a zero state, the chunk start states are
  then propagated with a log-depth (Hillis-Steele) scan, and a second T-step pass adds their decayed
  contribution. Only exponentials of non-positive numbers are taken, so it is stable for any length
  and any delta/A magnitude; about 11*T + 4*log2(L/T) tensor ops instead of ~4*L.
- ``cpu_fused``: a small C kernel (one fused loop over tokens per (batch, 16-channel block), the channels
  as vector lanes, D skip and SiLU gate fused, OpenMP on torch's thread team) compiled on first use with
  the system C compiler and called through ctypes; see ``models/scan_cpu.py``. Unavailable without a
  compiler, in which case ``auto`` uses ``chunked``. Also provides a fused causal conv + SiLU that the
  backbone's mixer uses when this backend is selected.
- ``cuda``: ``mamba_ssm``'s ``selective_scan_fn`` when that package is importable (it is source-only on
  PyPI and needs nvcc, so the CUDA runtime worker image usually lacks it).
- ``triton``: our own Triton kernel (``models/scan_triton.py``): one launch per call, D skip and SiLU
  gate fused; ``auto``'s choice on CUDA without ``mamba_ssm``. Needs the ``triton`` package (imported only
  when used); runs on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests it). Without triton, ``auto``
  falls back to ``chunked`` on CUDA (~11*T + 4*log2(L/T) launches per call, T <= 64).

Every backend computes in float32, with autocast disabled, whatever the input dtype.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

ScanFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                   torch.Tensor], torch.Tensor]


def _float32_no_autocast(fn: ScanFn) -> ScanFn:
    """Run a scan in float32 with autocast off (bf16 decays lose the state within a few hundred tokens)."""
    @functools.wraps(fn)
    def wrapper(u, delta, A, Bm, C, D, z, **options):
        with torch.autocast(u.device.type, enabled=False):
            return fn(u, delta, A, Bm, C, D, z, **options)
    return wrapper


@_float32_no_autocast
def selective_scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                             C: torch.Tensor, D: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sequential float32 scan, one step per token (the semantics of transformers' MambaMixer slow path).

    Every backend (``ScanFn``) takes these arguments and returns the same result within float32 rounding.

    Args:
        u: Input (B, E, L).
        delta: Step sizes (B, E, L), already softplus-ed.
        A: State matrix (E, N), already ``-exp(A_log)``.
        Bm: Input projection (B, L, N).
        C: Output projection (B, L, N).
        D: Skip weights (E,).
        z: Gate (B, E, L), applied as ``silu(z)``.

    Returns:
        y (B, E, L) in u's dtype.
    """
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


def default_chunk(length: int) -> int:
    """Chunk length for the chunked scan: ~sqrt(L) balances the two T-step passes against chunk count."""
    return max(1, min(64, 1 << max(0, round(math.log2(max(1.0, math.sqrt(length)))))))


def _propagate_chunk_states(decay: torch.Tensor, local_end: torch.Tensor) -> torch.Tensor:
    """Start state of every chunk from (total decay, end state from zero) per chunk, dim -2 = chunk.

    Linear recurrence s_c = decay_{c-1} * s_{c-1} + local_end_{c-1}, s_0 = 0, solved with a
    Hillis-Steele scan over the (decay, offset) pairs: log2(chunks) steps of products of decays <= 1.
    """
    a = decay.clone()            # after the scan: product of decays of chunks [c - span + 1, c]
    b = local_end.clone()        # after the scan: state at the end of chunk c
    n_chunks = a.shape[-2]
    span = 1
    while span < n_chunks:
        b_prev = b[..., :-span, :]
        b = torch.cat([b[..., :span, :], torch.addcmul(b[..., span:, :], a[..., span:, :], b_prev)], dim=-2)
        a = torch.cat([a[..., :span, :], a[..., span:, :] * a[..., :-span, :]], dim=-2)
        span *= 2
    return torch.cat([torch.zeros_like(b[..., :1, :]), b[..., :-1, :]], dim=-2)


@_float32_no_autocast
def selective_scan_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor, z: torch.Tensor,
                           chunk: int | None = None) -> torch.Tensor:
    """Chunk-parallel float32 scan, same result as the reference within float32 rounding."""
    dtype = u.dtype
    u, delta, A, Bm, C, D, z = (t.float() for t in (u, delta, A, Bm, C, D, z))
    batch, channels, length = u.shape
    n_state = A.shape[1]
    T = chunk or default_chunk(length)
    n_chunks = -(-length // T)
    pad = n_chunks * T - length

    def to_steps(x: torch.Tensor) -> torch.Tensor:
        """(B, E, L) -> (T, B, E, chunks), zero padded (delta 0 => decay 1, input 0)."""
        x = F.pad(x, (0, pad))
        return x.view(batch, channels, n_chunks, T).permute(3, 0, 1, 2).contiguous()

    def to_steps_bl(x: torch.Tensor) -> torch.Tensor:
        """(B, L, N) -> (T, B, 1, chunks, N)."""
        x = F.pad(x, (0, 0, 0, pad))
        return x.view(batch, n_chunks, T, n_state).permute(2, 0, 1, 3).unsqueeze(2).contiguous()

    dt_steps = to_steps(delta)
    x_steps = to_steps(delta * u)
    b_steps, c_steps = to_steps_bl(Bm), to_steps_bl(C)
    A_b = A[None, :, None, :]                                          # (1, E, 1, N)

    # Pass 1: every chunk from a zero state.
    h = u.new_zeros(batch, channels, n_chunks, n_state)
    y_steps = u.new_empty(T, batch, channels, n_chunks)
    for t in range(T):
        dA = torch.exp(dt_steps[t].unsqueeze(-1) * A_b)
        h = torch.addcmul(dA * h, x_steps[t].unsqueeze(-1), b_steps[t])
        torch.sum(h * c_steps[t], dim=-1, out=y_steps[t])

    if n_chunks > 1:
        # Chunk start states, then pass 2: their decayed contribution, exp(A * cumulative delta) <= 1.
        chunk_delta = dt_steps.sum(0)                                  # (B, E, chunks)
        decay = torch.exp(chunk_delta.unsqueeze(-1) * A_b)
        start = _propagate_chunk_states(decay, h)
        cum_delta = torch.zeros_like(chunk_delta)
        for t in range(T):
            cum_delta = cum_delta + dt_steps[t]
            carried = torch.exp(cum_delta.unsqueeze(-1) * A_b) * start
            y_steps[t] += torch.sum(carried * c_steps[t], dim=-1)

    y = y_steps.permute(1, 2, 3, 0).reshape(batch, channels, n_chunks * T)[..., :length]
    y = y + u * D[None, :, None]
    return (y * F.silu(z)).to(dtype)


def _cuda_scan() -> ScanFn | None:
    """mamba_ssm's fused CUDA kernel with our argument order, or None when it is not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build
        return None

    @_float32_no_autocast
    def selective_scan_cuda(u, delta, A, Bm, C, D, z):
        dtype = u.dtype
        # mamba_ssm: u/delta/z (B, E, L), A (E, N), B/C (B, N, L) for input-dependent B/C ("variable").
        y = selective_scan_fn(u.float().contiguous(), delta.float().contiguous(), A.float().contiguous(),
                              Bm.float().transpose(1, 2).contiguous(), C.float().transpose(1, 2).contiguous(),
                              D.float().contiguous(), z.float().contiguous(), delta_bias=None,
                              delta_softplus=False)
        return y.to(dtype)
    return selective_scan_cuda


def _triton_scan() -> ScanFn | None:
    try:
        from models.scan_triton import selective_scan_triton
    except Exception:  # ImportError (no triton), or a triton that does not match this torch
        return None
    return _float32_no_autocast(selective_scan_triton)


def _cpu_fused_scan() -> ScanFn | None:
    try:
        from models.scan_cpu import load_cpu_fused_scan
    except Exception:
        return None
    fn = load_cpu_fused_scan()
    return _float32_no_autocast(fn) if fn is not None else None


SCANS: dict[str, ScanFn] = {"reference": selective_scan_reference, "chunked": selective_scan_chunked}
_OPTIONAL_SCANS: dict[str, Callable[[], ScanFn | None]] = {"cuda": _cuda_scan, "triton": _triton_scan,
                                                          "cpu_fused": _cpu_fused_scan}
# auto's preference per device type (the first available wins)
_AUTO_ORDER = {"cuda": ("cuda", "triton", "chunked"), "cpu": ("cpu_fused", "chunked")}


@functools.lru_cache(maxsize=None)
def _optional_scan(name: str) -> ScanFn | None:
    return _OPTIONAL_SCANS[name]()


def available_scans(device: torch.device | str | None = None) -> list[str]:
    """Backend names usable on ``device`` (optional ones only when they load)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    names = ["reference", "chunked"]
    if dev.type == "cuda":
        names += [name for name in ("cuda", "triton") if _optional_scan(name) is not None]
    if dev.type == "cpu" and _optional_scan("cpu_fused") is not None:
        names.append("cpu_fused")
    return names


def auto_scan_name(device: torch.device | str | None = None) -> str:
    """The fastest correct backend for a device: on CUDA mamba_ssm's kernel, else our Triton kernel, else
    chunked; on CPU the fused C kernel, else chunked."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    available = available_scans(dev)
    for name in _AUTO_ORDER.get(dev.type, ("chunked",)):
        if name in available:
            return name
    return "reference"


@functools.lru_cache(maxsize=None)
def _auto_scan_for(device_type: str) -> ScanFn:
    return resolve_scan(auto_scan_name(device_type), device_type)


def selective_scan_auto(u, delta, A, Bm, C, D, z):
    """Runs the fastest available backend for the tensors' device type (looked up once per type)."""
    return _auto_scan_for(u.device.type)(u, delta, A, Bm, C, D, z)


def resolve_scan(name: str = "reference", device: torch.device | str | None = None) -> ScanFn:
    """Return the scan function for a backend name.

    ``'auto'`` picks the fastest correct one for ``device`` (see ``auto_scan_name``); without a device it
    returns a dispatcher that decides per call from the tensors (``DynamicVisBackbone`` instead resolves
    ``'auto'`` at its first forward, which also gets it the fused CPU conv).

    Args:
        name: 'reference', 'chunked', 'cpu_fused', 'cuda', 'triton' or 'auto'.
        device: The device the scan will run on (for 'auto').

    Returns:
        A ``ScanFn``: ``fn(u, delta, A, Bm, C, D, z) -> y`` (see ``selective_scan_reference``).

    Raises:
        ValueError: An unknown name.
        RuntimeError: An optional backend that cannot load here (says why).
    """
    if name == "auto":
        if device is None:
            return selective_scan_auto
        name = auto_scan_name(device)
    if name in SCANS:
        return SCANS[name]
    if name in _OPTIONAL_SCANS:
        fn = _optional_scan(name)
        if fn is None:
            why = {"cuda": "mamba_ssm not importable", "triton": "triton not importable (pip install triton)",
                   "cpu_fused": "no C compiler/OpenMP"}[name]
            raise RuntimeError(f"scan backend {name!r} is not available here ({why})")
        return fn
    raise ValueError(f"unknown scan backend {name!r}; "
                     f"choose one of {sorted(SCANS) + sorted(_OPTIONAL_SCANS) + ['auto']}")
