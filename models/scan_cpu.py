"""Fused CPU selective scan: a small C kernel compiled on first use, called through ctypes.

Why: on CPU every pure-PyTorch formulation of the scan materialises (B, E, L, N) float32 tensors several
times (54 MB per DynamicVis block and tile), so it is bound by memory traffic. One fused loop over tokens
per (batch, block of 16 channels), the channels as vector lanes, keeps the state in registers and reads
the inputs once, in the mixer's channels-last layout, with the D skip and SiLU gate fused (a per-(batch,
channel) row kernel serves other layouts and state sizes up to 256). A fused causal conv + SiLU is
provided for the mixer as well. No torch headers or pybind11: the kernel takes raw float pointers, so it compiles
in well under a second with the system C compiler. Threads: OpenMP inside the library, with
``torch.get_num_threads()`` threads; libgomp.so.1 resolves to the copy torch already loaded, so the scan
reuses torch's thread team (a separate Python thread pool fought torch's spin-waiting OpenMP workers
for the cores and doubled the scan's median time).

If no compiler is found or compilation fails, :func:`load_cpu_fused_scan` returns None and
``resolve_scan('auto')`` falls back to the pure-PyTorch chunked scan.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from models.config import cache_root

_C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for x <= 0 (the decays delta*A), inlined so the channel loop vectorises without a libmvec call:
   Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, degree-6 minimax polynomial (the Cephes expf
   coefficients), scale by 2^k through the exponent bits. About 1 ulp. Arguments below -87 are clamped
   (exp(-87) = 1.6e-38 instead of a smaller or denormal number: no visible effect on h). */
static inline float decay_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float k = rintf(x * 1.44269504088896341f);
    float r = fmaf(k, -0.693359375f, x);
    r = fmaf(k, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r + 1.0f);
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Rows [row_begin, row_end) of the flattened (batch, channel) grid. Layouts (C order, float32):
   u, delta, y: (B, E, L); A: (E, N); Bm, C: (B, L, N). y_t = <h_t, C_t> only: the D and gate terms
   are added by the caller with tensor ops.
   N == 16 path: tokens are processed in blocks of TB so that the exponentials and the input terms of a
   block are computed in one vectorised sweep (independent work), leaving only one FMA per state and
   token on the serial dependency chain; two channels are interleaved to hide its latency. */
#define TB 16

static void scan_rows_16(const float *u, const float *delta, const float *A, const float *Bm,
                         const float *C, float *y, int64_t E, int64_t L,
                         int64_t row_begin, int64_t row_end) {
    float dA[2][TB][16], xb[2][TB][16], H[2][TB][16];
    for (int64_t row0 = row_begin; row0 < row_end; row0 += 2) {
        const int nrows = (row_end - row0) >= 2 ? 2 : 1;
        float a[2][16], h[2][16];
        const float *Bb[2], *Cb[2], *uu[2], *d[2];
        float *yy[2];
        for (int r = 0; r < 2; ++r) {
            const int64_t row = row0 + (r < nrows ? r : 0);
            const int64_t b = row / E, e = row % E;
            uu[r] = u + row * L; d[r] = delta + row * L; yy[r] = y + row * L;
            Bb[r] = Bm + b * L * 16; Cb[r] = C + b * L * 16;
            for (int n = 0; n < 16; ++n) { a[r][n] = A[e * 16 + n]; h[r][n] = 0.0f; }
        }
        for (int64_t t0 = 0; t0 < L; t0 += TB) {
            const int nb = (L - t0) < TB ? (int)(L - t0) : TB;
            for (int r = 0; r < 2; ++r) {
                for (int i = 0; i < nb; ++i) {
                    const float dt = d[r][t0 + i], x = dt * uu[r][t0 + i];
                    const float *Bt = Bb[r] + (t0 + i) * 16;
                    _Pragma("omp simd")
                    for (int n = 0; n < 16; ++n) { dA[r][i][n] = expf(dt * a[r][n]); xb[r][i][n] = x * Bt[n]; }
                }
            }
            for (int i = 0; i < nb; ++i) {
                _Pragma("omp simd")
                for (int n = 0; n < 16; ++n) {
                    h[0][n] = dA[0][i][n] * h[0][n] + xb[0][i][n]; H[0][i][n] = h[0][n];
                    h[1][n] = dA[1][i][n] * h[1][n] + xb[1][i][n]; H[1][i][n] = h[1][n];
                }
            }
            for (int r = 0; r < nrows; ++r) {
                for (int i = 0; i < nb; ++i) {
                    const float *Ct = Cb[r] + (t0 + i) * 16;
                    float acc = 0.0f;
                    _Pragma("omp simd reduction(+:acc)")
                    for (int n = 0; n < 16; ++n) acc += H[r][i][n] * Ct[n];
                    yy[r][t0 + i] = acc;
                }
            }
        }
    }
}

#define SCAN_BODY(NS)                                                                  \
    for (int64_t t = 0; t < L; ++t) {                                                  \
        const float dt = d[t];                                                         \
        const float x = dt * uu[t];                                                    \
        const float *Bt = Bb + t * NS, *Ct = Cb + t * NS;                              \
        float acc = 0.0f;                                                              \
        for (int64_t n = 0; n < NS; ++n) {                                             \
            h[n] = expf(dt * a[n]) * h[n] + x * Bt[n];                                 \
            acc += h[n] * Ct[n];                                                       \
        }                                                                              \
        yy[t] = acc;                                                                   \
    }

static void scan_rows_any(const float *u, const float *delta, const float *A, const float *Bm,
                          const float *C, float *y, int64_t E, int64_t L, int64_t N,
                          int64_t row_begin, int64_t row_end) {
    float a[256], h[256];
    for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / E, e = row % E;
        const float *uu = u + row * L, *d = delta + row * L;
        const float *Bb = Bm + b * L * N, *Cb = C + b * L * N;
        float *yy = y + row * L;
        for (int64_t n = 0; n < N; ++n) { a[n] = A[e * N + n]; h[n] = 0.0f; }
        SCAN_BODY(N)
    }
}

/* Channels-last layout: u, delta, z, y are (B, L, E) contiguous (the Mamba mixer's natural layout),
   A: (E, N), Bm, C: (B, L, N), D: (E). Work items are (batch, block of 16 channels); the 16 channels are
   the vector lanes, so the N state recurrences are independent FMA chains and no horizontal sums are
   needed. Fuses the D skip term and the SiLU gate: y = (<h_t, C_t> + D u_t) * z_t * sigmoid(z_t). */
int selective_scan_cl_f32(const float *u, const float *delta, const float *z, int64_t z_ld, const float *A,
                          const float *Bm, const float *C, const float *D, float *y,
                          int64_t E, int64_t L, int64_t N, int64_t item_begin, int64_t item_end) {
    if (N > 64) return 1;
    const int64_t nblk = (E + 15) / 16;
    float a[64][16], h[64][16];
    for (int64_t item = item_begin; item < item_end; ++item) {
        const int64_t b = item / nblk, e0 = (item % nblk) * 16;
        const int W = (E - e0) < 16 ? (int)(E - e0) : 16;
        float dskip[16];
        for (int64_t n = 0; n < N; ++n)
            for (int i = 0; i < 16; ++i) { a[n][i] = i < W ? A[(e0 + i) * N + n] : 0.0f; h[n][i] = 0.0f; }
        for (int i = 0; i < 16; ++i) dskip[i] = i < W ? D[e0 + i] : 0.0f;
        for (int64_t t = 0; t < L; ++t) {
            const int64_t off = (b * L + t) * E + e0;
            const float *Bt = Bm + (b * L + t) * N, *Ct = C + (b * L + t) * N;
            float dv[16], uv[16], xv[16], acc[16];
            if (W == 16) {
                for (int i = 0; i < 16; ++i) { dv[i] = delta[off + i]; uv[i] = u[off + i]; }
            } else {
                for (int i = 0; i < 16; ++i) {
                    dv[i] = i < W ? delta[off + i] : 0.0f; uv[i] = i < W ? u[off + i] : 0.0f;
                }
            }
            _Pragma("omp simd")
            for (int i = 0; i < 16; ++i) { xv[i] = dv[i] * uv[i]; acc[i] = 0.0f; }
            for (int64_t n = 0; n < N; ++n) {
                const float bn = Bt[n], cn = Ct[n];
                _Pragma("omp simd")
                for (int i = 0; i < 16; ++i) {
                    h[n][i] = decay_expf(dv[i] * a[n][i]) * h[n][i] + xv[i] * bn;
                    acc[i] += h[n][i] * cn;
                }
            }
            for (int i = 0; i < W; ++i) {
                const float zi = z[(b * L + t) * z_ld + e0 + i];
                y[off + i] = (acc[i] + dskip[i] * uv[i]) * (zi / (1.0f + expf(-zi)));
            }
        }
    }
    return 0;
}

/* SiLU(depthwise causal conv) in the mixer's (B, L, E) layout: x rows have leading dimension ld (the conv
   input is the first E columns of in_proj's output), wT: (K, E), out: (B, L, E) contiguous.
   out_t = silu(bias + sum_k w_k x_{t+k-K+1}), summed in k order like the tensor-op version. */
int causal_conv_silu_cl_f32(const float *x, int64_t ld, const float *wT, const float *bias, float *out,
                            int64_t Bn, int64_t L, int64_t E, int64_t K, int64_t threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t bt = 0; bt < Bn * L; ++bt) {
        const int64_t t = bt % L;
        float *o = out + bt * E;
        #pragma omp simd
        for (int64_t e = 0; e < E; ++e) o[e] = bias[e];
        for (int64_t k = 0; k < K; ++k) {
            const int64_t src = t + k - (K - 1);
            if (src < 0) continue;
            const float *xr = x + (bt - t + src) * ld, *wk = wT + k * E;
            #pragma omp simd
            for (int64_t e = 0; e < E; ++e) o[e] += wk[e] * xr[e];
        }
        #pragma omp simd
        for (int64_t e = 0; e < E; ++e) o[e] = o[e] / (1.0f + expf(-o[e]));
    }
    return 0;
}

/* OpenMP drivers: the library links libgomp.so.1, which resolves to the copy torch has already loaded,
   so the scan shares torch's thread team instead of fighting its spinning workers for the cores. */
int selective_scan_rows_f32(const float *, const float *, const float *, const float *, const float *,
                            float *, int64_t, int64_t, int64_t, int64_t, int64_t);

int selective_scan_rows_f32_mt(const float *u, const float *delta, const float *A, const float *Bm,
                               const float *C, float *y, int64_t E, int64_t L, int64_t N,
                               int64_t items, int64_t threads) {
    int status = 0;
    #pragma omp parallel for num_threads(threads) schedule(static) reduction(|:status)
    for (int64_t part = 0; part < threads; ++part)
        status |= selective_scan_rows_f32(u, delta, A, Bm, C, y, E, L, N, items * part / threads,
                                          items * (part + 1) / threads);
    return status;
}

int selective_scan_cl_f32_mt(const float *u, const float *delta, const float *z, int64_t z_ld, const float *A,
                             const float *Bm, const float *C, const float *D, float *y,
                             int64_t E, int64_t L, int64_t N, int64_t items, int64_t threads) {
    int status = 0;
    #pragma omp parallel for num_threads(threads) schedule(static) reduction(|:status)
    for (int64_t part = 0; part < threads; ++part)
        status |= selective_scan_cl_f32(u, delta, z, z_ld, A, Bm, C, D, y, E, L, N, items * part / threads,
                                        items * (part + 1) / threads);
    return status;
}

int selective_scan_rows_f32(const float *u, const float *delta, const float *A, const float *Bm,
                            const float *C, float *y, int64_t E, int64_t L, int64_t N,
                            int64_t row_begin, int64_t row_end) {
    if (N == 16) { scan_rows_16(u, delta, A, Bm, C, y, E, L, row_begin, row_end); return 0; }
    if (N <= 256) { scan_rows_any(u, delta, A, Bm, C, y, E, L, N, row_begin, row_end); return 0; }
    return 1;
}
"""

# -ffast-math only when compiling (glibc then declares the AVX-512 vector expf used by `omp simd`); the
# link step must not see it, or gcc links crtfastmath.o, whose constructor sets FTZ/DAZ for the whole
# process when the library loads -- flushing float32 denormals, which the routing weights can be.
_COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-c"]
_LINK_FLAGS = ["-shared", "-fopenmp"]
_FLAGS = _COMPILE_FLAGS + _LINK_FLAGS


def _cache_dir() -> Path:
    return cache_root() / "scan_cpu"


def _cpu_signature() -> str:
    """-march=native code must not be reused on another CPU model: key the cache on the CPU flags."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def _build(compiler: str) -> Path:
    key = hashlib.sha256("\0".join([_C_SOURCE, compiler, *_FLAGS, platform.machine(), _cpu_signature()])
                         .encode()).hexdigest()[:16]
    target = _cache_dir() / f"scan_cpu_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "scan_cpu.c"
        src.write_text(_C_SOURCE)
        obj, out = Path(tmp) / "scan_cpu.o", Path(tmp) / "scan_cpu.so"
        subprocess.run([compiler, *_COMPILE_FLAGS, str(src), "-o", str(obj)], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([compiler, *_LINK_FLAGS, str(obj), "-o", str(out), "-lmvec", "-lm"], check=True,
                       capture_output=True, timeout=120)
        os.replace(out, target)   # atomic: concurrent builders never see a half-written library
    return target


def _load_library() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler or platform.system() == "Windows":
        return None
    try:
        before = _denormals_flushed()
        lib = ctypes.CDLL(str(_build(compiler)))
        if _denormals_flushed() and not before:   # never change the process's float environment
            raise OSError("loading the scan library turned on flush-to-zero")
    except (OSError, subprocess.SubprocessError):
        return None
    for fn in (lib.selective_scan_rows_f32_mt, lib.selective_scan_cl_f32_mt, lib.causal_conv_silu_cl_f32):
        fn.restype = ctypes.c_int
    lib.selective_scan_rows_f32_mt.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5
    lib.selective_scan_cl_f32_mt.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 5
                                             + [ctypes.c_int64] * 5)
    lib.causal_conv_silu_cl_f32.argtypes = ([ctypes.c_void_p] + [ctypes.c_int64] + [ctypes.c_void_p] * 3
                                            + [ctypes.c_int64] * 5)
    return lib


def _denormals_flushed() -> bool:
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    return bool((tiny * 1.0 == 0).item())


def load_cpu_fused_scan() -> Callable | None:
    """The fused scan (same signature and semantics as ``selective_scan_reference``), or None."""
    lib = _load_library()
    if lib is None:
        return None
    row_kernel, cl_kernel = lib.selective_scan_rows_f32_mt, lib.selective_scan_cl_f32_mt

    def run_split(kernel, ptrs: list[int], sizes: list[int], items: int) -> None:
        """``kernel(*ptrs, *sizes, items, threads)``: OpenMP over ``items`` work items inside the library."""
        threads = max(1, min(torch.get_num_threads(), items))
        if kernel(*ptrs, *sizes, items, threads):
            raise ValueError("cpu_fused scan: unsupported state size")

    def selective_scan_cpu_fused(u, delta, A, Bm, C, D, z):
        if u.device.type != "cpu":
            raise ValueError("cpu_fused scan needs CPU tensors")
        dtype = u.dtype
        batch, channels, length = u.shape
        n_state = A.shape[1]
        A32, B32, C32, D32 = (t.detach().float().contiguous() for t in (A, Bm, C, D))
        u, delta, z = (t.detach().float() for t in (u, delta, z))       # .float() keeps the layout
        if all(t.stride(1) == 1 for t in (u, delta, z)) and n_state <= 64:
            # (B, E, L) views of (B, L, E) storage: scan in place of the layout, gate fused, no copies.
            u_cl, d_cl = (t.transpose(1, 2).contiguous() for t in (u, delta))   # no-ops if channels-last
            z_cl = z.transpose(1, 2)
            if z_cl.stride(2) != 1 or z_cl.stride(0) != length * z_cl.stride(1):   # rows of a wider tensor ok
                z_cl = z_cl.contiguous()
            y = torch.empty_like(u_cl)
            ptrs = [u_cl.data_ptr(), d_cl.data_ptr(), z_cl.data_ptr(), z_cl.stride(1)] + [
                t.data_ptr() for t in (A32, B32, C32, D32, y)]
            run_split(cl_kernel, ptrs, [channels, length, n_state], batch * (-(-channels // 16)))
            return y.transpose(1, 2).to(dtype)
        if n_state > 256:
            raise ValueError("cpu_fused scan supports state sizes up to 256")
        u, delta = u.contiguous(), delta.contiguous()
        y = torch.empty_like(u)
        ptrs = [t.data_ptr() for t in (u, delta, A32, B32, C32, y)]
        run_split(row_kernel, ptrs, [channels, length, n_state], batch * channels)
        y = y + u * D32[None, :, None]
        return (y * F.silu(z)).to(dtype)

    def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """silu(depthwise causal conv) of x (B, L, E) float32 whose rows may be wider (stride(1) >= E)."""
        batch, length, channels = x.shape
        if x.stride(2) != 1 or x.stride(0) != length * x.stride(1):
            x = x.contiguous()
        wT = weight.detach().float().reshape(channels, -1).t().contiguous()        # (K, E)
        b32 = bias.detach().float().contiguous()
        out = torch.empty(batch, length, channels, dtype=torch.float32)
        threads = max(1, min(torch.get_num_threads(), batch * length))
        lib.causal_conv_silu_cl_f32(x.data_ptr(), x.stride(1), wT.data_ptr(), b32.data_ptr(), out.data_ptr(),
                                    batch, length, channels, wT.shape[0], threads)
        return out

    # Opaque to torch.compile: dynamo must not trace the pointer handling (it produced NaNs when it did);
    # the compiled graph breaks around these calls and runs them eagerly on real tensors.
    selective_scan_cpu_fused = torch.compiler.disable(selective_scan_cpu_fused)
    selective_scan_cpu_fused.causal_conv_silu = torch.compiler.disable(causal_conv_silu)  # type: ignore[attr-defined]
    return selective_scan_cpu_fused
