"""Fast selective-scan backends against the sequential reference (no timing assertions)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from models.scan import (SCANS, auto_scan_name, available_scans, resolve_scan, selective_scan_chunked,
                         selective_scan_reference)

FAST_CPU = [name for name in available_scans("cpu") if name != "reference"]


def scan_inputs(batch: int, channels: int, length: int, n_state: int = 16, seed: int = 0,
                dt_shift: float = -2.0, learned_a: bool = False) -> tuple[torch.Tensor, ...]:
    """Realistic magnitudes: delta = softplus(N(0,1) + shift) (~0.02..2), A = -(1..N) or learned-like."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, length, generator=g)
    delta = F.softplus(torch.randn(batch, channels, length, generator=g) + dt_shift)
    if learned_a:
        A = -torch.exp(torch.randn(channels, n_state, generator=g) * 1.5)
    else:
        A = -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(channels, 1)
    Bm = torch.randn(batch, length, n_state, generator=g)
    C = torch.randn(batch, length, n_state, generator=g)
    D = 1.0 + 0.1 * torch.randn(channels, generator=g)
    z = torch.randn(batch, channels, length, generator=g)
    return u, delta, A, Bm, C, D, z


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def test_registry_and_auto():
    assert {"reference", "chunked"} <= set(SCANS)
    assert resolve_scan("reference") is selective_scan_reference
    assert resolve_scan("chunked") is selective_scan_chunked
    assert auto_scan_name("cpu") in ("cpu_fused", "chunked")
    assert resolve_scan("auto", "cpu") is resolve_scan(auto_scan_name("cpu"), "cpu")
    with pytest.raises(ValueError):
        resolve_scan("nope")


@pytest.mark.parametrize("name", FAST_CPU)
@pytest.mark.parametrize("batch,channels,length", [(1, 8, 1), (2, 8, 2), (1, 16, 7), (2, 24, 63), (2, 24, 64),
                                                   (3, 12, 100), (1, 8, 257)])
def test_matches_reference_float32(name, batch, channels, length):
    x = scan_inputs(batch, channels, length, seed=length)
    expected = selective_scan_reference(*x)
    got = resolve_scan(name)(*x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("chunk", [1, 3, 8, 16, 64, 512])
def test_chunked_any_chunk_length(chunk):
    x = scan_inputs(2, 8, 130, seed=chunk)
    assert rel_err(selective_scan_chunked(*x, chunk=chunk), selective_scan_reference(*x)) <= 1e-5


@pytest.mark.parametrize("name", FAST_CPU)
@pytest.mark.parametrize("dt_shift,learned_a", [(-2.0, False), (1.0, False), (-1.0, True)])
def test_long_sequence_stage0_length(name, dt_shift, learned_a):
    """Stage 0 at 512 px: 128 global + 2048 selected tokens; also large decays (delta*|A| up to ~50)."""
    x = scan_inputs(2, 8, 2176, seed=7, dt_shift=dt_shift, learned_a=learned_a)
    assert rel_err(resolve_scan(name)(*x), selective_scan_reference(*x)) <= 1e-5


@pytest.mark.parametrize("name", FAST_CPU)
def test_reverse_direction_flipped_sequence(name):
    """The backbone scans the sequence and its reversal as one batch of 2B."""
    u, delta, A, Bm, C, D, z = scan_inputs(1, 16, 300, seed=3)
    both = (torch.cat([u, u.flip(-1)]), torch.cat([delta, delta.flip(-1)]), A,
            torch.cat([Bm, Bm.flip(1)]), torch.cat([C, C.flip(1)]), D, torch.cat([z, z.flip(-1)]))
    expected = selective_scan_reference(*both)
    got = resolve_scan(name)(*both)
    assert rel_err(got, expected) <= 1e-5
    assert rel_err(got[1:], resolve_scan(name)(*(t[1:] if t.dim() == 3 else t for t in both))) <= 1e-6


@pytest.mark.parametrize("name", FAST_CPU)
def test_other_state_size(name):
    x = scan_inputs(2, 8, 50, n_state=5, seed=11)
    assert rel_err(resolve_scan(name)(*x), selective_scan_reference(*x)) <= 1e-5


@pytest.mark.parametrize("name", ["reference"] + FAST_CPU)
def test_bf16_inputs_and_autocast_compute_in_float32(name):
    """Under bf16 autocast the scan still runs in float32; bf16 inputs give bf16 outputs."""
    x = scan_inputs(2, 16, 200, seed=5)
    expected = selective_scan_reference(*x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = resolve_scan(name)(*x)
    assert got.dtype == torch.float32
    assert rel_err(got, expected) <= 1e-5
    got_bf16 = resolve_scan(name)(*(t.bfloat16() for t in x))
    assert got_bf16.dtype == torch.bfloat16
    expected_from_bf16 = selective_scan_reference(*(t.bfloat16().float() for t in x))
    assert rel_err(got_bf16, expected_from_bf16) <= 1e-2


@pytest.mark.parametrize("name", FAST_CPU)
def test_deterministic(name):
    x = scan_inputs(2, 16, 333, seed=9)
    fn = resolve_scan(name)
    assert torch.equal(fn(*x), fn(*x))


@pytest.mark.parametrize("name", FAST_CPU)
@pytest.mark.parametrize("channels", [16, 40, 5])
def test_channels_last_views(name, channels):
    """The mixer passes (B, E, L) views of (B, L, E) storage; cpu_fused scans them in place."""
    x = scan_inputs(2, channels, 150, seed=channels)
    cl = [t.transpose(1, 2).contiguous().transpose(1, 2) if t.dim() == 3 and t.shape[1] == channels else t
          for t in x]
    assert rel_err(resolve_scan(name)(*cl), selective_scan_reference(*x)) <= 1e-5


def test_auto_without_device_dispatches_per_call():
    x = scan_inputs(1, 8, 20)
    assert rel_err(resolve_scan("auto")(*x), selective_scan_reference(*x)) <= 1e-5


def test_non_contiguous_inputs():
    u, delta, A, Bm, C, D, z = scan_inputs(2, 8, 40, seed=2)
    ut = u.transpose(1, 2).contiguous().transpose(1, 2)
    for name in FAST_CPU:
        assert rel_err(resolve_scan(name)(ut, delta, A, Bm, C, D, z),
                       selective_scan_reference(u, delta, A, Bm, C, D, z)) <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
@pytest.mark.parametrize("name", ["chunked", "cuda", "triton"])
def test_cuda_backends(name):
    if name not in available_scans("cuda"):
        pytest.skip(f"{name} not available")
    x = scan_inputs(2, 16, 600, seed=4)
    expected = selective_scan_reference(*x)
    got = resolve_scan(name, "cuda")(*(t.cuda() for t in x)).cpu()
    assert rel_err(got, expected) <= 1e-5


@pytest.fixture
def triton_interpreted():
    """The ``triton`` backend on CPU tensors through Triton's interpreter (CI has no GPU)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (tests/conftest.py sets it without CUDA)")
    return resolve_scan("triton")


# Small on purpose: the interpreter runs the kernel in Python (about a second per case).
@pytest.mark.parametrize("batch,channels,length,n_state", [
    (1, 8, 1, 16),      # length 1
    (2, 40, 37, 16),    # batch > 1; channels and length not multiples of the 32-channel block
    (3, 5, 20, 5),      # state size that is not a power of two
])
def test_triton_interpreted_matches_reference(triton_interpreted, batch, channels, length, n_state):
    x = scan_inputs(batch, channels, length, n_state=n_state, seed=length, learned_a=True)
    got = triton_interpreted(*x)
    assert got.shape == (batch, channels, length) and got.dtype == torch.float32
    assert rel_err(got, selective_scan_reference(*x)) <= 1e-5


def test_triton_interpreted_both_directions_channels_last(triton_interpreted):
    """The mixer's call: forward and reversed sequence as one 2B batch, (B, E, L) views of (B, L, E)."""
    u, delta, A, Bm, C, D, z = scan_inputs(1, 36, 29, seed=8)
    both = [torch.cat([u, u.flip(-1)]), torch.cat([delta, delta.flip(-1)]), A, torch.cat([Bm, Bm.flip(1)]),
            torch.cat([C, C.flip(1)]), D, torch.cat([z, z.flip(-1)])]
    expected = selective_scan_reference(*both)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) if i in (0, 1, 6) else t for i, t in enumerate(both)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = triton_interpreted(*views)
    assert got.dtype == torch.float32
    assert rel_err(got, expected) <= 1e-5


def test_triton_is_auto_on_cuda_without_mamba_ssm():
    pytest.importorskip("triton")
    if "cuda" in available_scans("cuda"):
        pytest.skip("mamba_ssm is installed: auto prefers it")
    assert auto_scan_name("cuda") == "triton"
    assert auto_scan_name("cpu") != "triton"


def test_triton_refuses_cpu_tensors_without_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        resolve_scan("triton")(*scan_inputs(1, 4, 3))


def test_loading_backends_keeps_denormals():
    """A fast-math shared library must not switch the process to flush-to-zero (routing weights are denormal)."""
    available_scans("cpu")
    assert (torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() != 0.0


@pytest.mark.skipif("cpu_fused" not in FAST_CPU, reason="no C compiler")
@pytest.mark.parametrize("length", [1, 3, 50])
def test_fused_causal_conv_silu_matches_conv1d(length):
    g = torch.Generator().manual_seed(length)
    E = 40
    xz = torch.randn(2, length, 2 * E, generator=g)
    conv = torch.nn.Conv1d(E, E, 4, groups=E, padding=3)
    expected = F.silu(conv(xz[..., :E].transpose(1, 2))[..., :length]).transpose(1, 2)
    got = resolve_scan("cpu_fused").causal_conv_silu(xz[..., :E], conv.weight, conv.bias)
    assert (got - expected).abs().max().item() <= 1e-6
