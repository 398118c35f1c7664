"""Triton selective scan (backend ``triton``): the GPU kernel of our own, for workers without ``mamba_ssm``.

One program per (batch row, block of ``BLOCK_E`` channels) walks the sequence once, keeping the
(BLOCK_E, N) state in registers: per token it loads u, delta, z (BLOCK_E contiguous floats in the mixer's
channels-last layout) and B_t, C_t (N floats), updates h = exp(delta A) h + delta B u, and writes
y = (<h, C_t> + D u) * silu(z) -- D skip and SiLU gate fused, float32 throughout, one launch per call
(the pure-PyTorch ``chunked`` scan needs ~11 T + 4 log2(L / T) launches). Any strides are accepted, so the
mixer's (B, E, L) views of (B, L, E) storage are read in place. The causal conv stays a few tensor ops:
inside a CUDA graph (``models.runtime.CudaGraphForward``) those cost no launch overhead.

The sequence length is a compile-time constant (one compilation per distinct length: four per image size
in the backbone); as a runtime argument, Triton 3.6's interpreter cannot loop over it with numpy >= 2.4.

``import triton`` happens only when this backend is first used, and the kernel is compiled on first
call; with ``TRITON_INTERPRET=1`` it runs on CPU tensors through Triton's interpreter (how CI tests it).
"""
import functools
import os

import torch
import triton
import triton.language as tl

BLOCK_E = 32


def _selective_scan_kernel(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, E, N,
                           su_b, su_e, su_l, sd_b, sd_e, sd_l, sz_b, sz_e, sz_l, sa_e, sa_n,
                           sb_b, sb_l, sb_n, sc_b, sc_l, sc_n, sy_b, sy_e, sy_l,
                           L: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok, n_ok = e < E, n < N
    A = tl.load(A_ptr + e[:, None] * sa_e + n[None, :] * sa_n, mask=e_ok[:, None] & n_ok[None, :], other=0.0)
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0)
    u_ptr += row * su_b + e * su_e
    delta_ptr += row * sd_b + e * sd_e
    z_ptr += row * sz_b + e * sz_e
    y_ptr += row * sy_b + e * sy_e
    B_ptr += row * sb_b + n * sb_n
    C_ptr += row * sc_b + n * sc_n
    h = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    for t in range(L):
        u = tl.load(u_ptr + t * su_l, mask=e_ok, other=0.0)
        dt = tl.load(delta_ptr + t * sd_l, mask=e_ok, other=0.0)
        z = tl.load(z_ptr + t * sz_l, mask=e_ok, other=0.0)
        b = tl.load(B_ptr + t * sb_l, mask=n_ok, other=0.0)
        c = tl.load(C_ptr + t * sc_l, mask=n_ok, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * b[None, :]
        y = tl.sum(h * c[None, :], axis=1) + D * u
        tl.store(y_ptr + t * sy_l, y * z * tl.sigmoid(z), mask=e_ok)


@functools.lru_cache(maxsize=None)
def _kernel(interpret: str):
    """The jitted kernel; Triton reads TRITON_INTERPRET when decorating, so one per setting."""
    return triton.jit(_selective_scan_kernel)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def selective_scan_triton(u, delta, A, Bm, C, D, z):
    """Same signature and semantics as ``models.scan.selective_scan_reference`` (float32 compute)."""
    if u.device.type != "cuda" and not _interpreting():
        raise ValueError("the triton scan needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    dtype = u.dtype
    u, delta, z = (t.detach().float() for t in (u, delta, z))       # .float() keeps the layout
    A, Bm, C, D = (t.detach().float() for t in (A, Bm, C, D))
    batch, channels, length = u.shape
    n_state = A.shape[1]
    # channels-last output: the mixer transposes it back to (B, L, E) for out_proj at no cost
    y = torch.empty(batch, length, channels, device=u.device, dtype=torch.float32).transpose(1, 2)
    if length == 0 or batch == 0:
        return y.to(dtype)
    grid = (batch, triton.cdiv(channels, BLOCK_E))
    _kernel(os.environ.get("TRITON_INTERPRET", ""))[grid](
        u, delta, z, A, Bm, C, D, y, channels, n_state,
        *u.stride(), *delta.stride(), *z.stride(), *A.stride(), *Bm.stride(), *C.stride(), *y.stride(),
        L=length, BLOCK_E=BLOCK_E, BLOCK_N=max(triton.next_power_of_2(n_state), 2), num_warps=4)
    return y.to(dtype)
