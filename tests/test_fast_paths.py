"""Golden vectors through the fast backbone paths (fast scans, bf16 autocast), and determinism.

Tolerances: the backbone suite's 2.5e-5 max-abs for every float32 stage output with identical routing (what
the official operations need across AVX2 and AVX-512 CPUs, see tests/test_model_backbone.py).
bf16 autocast: cosine >= 0.999 to float32.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.recipe import recipe_backbone
from models.scan import available_scans
from tests.fixtures.recipe import load_golden

FAST_SCANS = [name for name in available_scans("cpu") if name != "reference"]


def _tolerance(arch: str, hot: bool, stage: int) -> float:
    """One tolerance for every CPU (tests/test_model_backbone.py explains 2.5e-5)."""
    return 2.5e-5


@pytest.fixture(scope="module")
def models_b64() -> dict[bool, torch.nn.Module]:
    return {hot: recipe_backbone("b", 64, hot).eval() for hot in (False, True)}


@pytest.mark.parametrize("scan", FAST_SCANS)
@pytest.mark.parametrize("arch,hot", [("b", True), ("b", False), ("l", True)])
def test_img64_goldens_through_fast_scans(scan, arch, hot):
    golden = load_golden(f"dynamicvis_{arch}_img64{'_hot' if hot else ''}.npz")
    model = recipe_backbone(arch, 64, hot).eval()
    model.set_scan(scan, "cpu")
    with torch.inference_mode():
        outputs = model(torch.from_numpy(golden["input"]))
    for stage, output in enumerate(outputs):
        error = np.abs(output.numpy() - golden[f"stage{stage}"]).max()
        assert error <= _tolerance(arch, hot, stage), f"{scan} {arch} hot={hot} stage{stage}: {error:.2e}"


@pytest.mark.parametrize("scan", ["auto"] + FAST_SCANS)
def test_bf16_autocast_close_to_float32(models_b64, scan):
    """A plain torch.autocast(cpu, bf16) around the model: routing, norms and scan stay float32."""
    golden = load_golden("dynamicvis_b_img64_hot.npz")
    model = models_b64[True]
    model.set_scan(scan, "cpu")
    x = torch.from_numpy(golden["input"])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(x)
    for stage, output in enumerate(outputs):
        assert output.dtype == torch.float32
        expected = torch.from_numpy(golden[f"stage{stage}"])
        cos = F.cosine_similarity(output.flatten(1).double(), expected.flatten(1).double(), dim=1).min()
        assert cos >= 0.999, f"stage{stage}: cosine {cos:.6f}"
    pooled = outputs[-1].mean(dim=(2, 3))
    cos = F.cosine_similarity(pooled.double(), expected.mean(dim=(2, 3)).double(), dim=1).min()
    assert cos >= 0.999


@pytest.mark.parametrize("scan", FAST_SCANS)
@pytest.mark.parametrize("bf16", [False, True])
def test_same_input_same_output(models_b64, scan, bf16):
    model = models_b64[False]      # the tied goldens: topk's tie rule must be stable too
    model.set_scan(scan, "cpu")
    x = torch.from_numpy(load_golden("dynamicvis_b_img64.npz")["input"])
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode(), ctx:
        first = model(x)
    with torch.inference_mode(), ctx:
        second = model(x)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_batch_of_tiles_equals_tiles_one_by_one(models_b64):
    model = models_b64[True]
    model.set_scan("auto", "cpu")
    x = torch.from_numpy(load_golden("dynamicvis_b_img64_hot.npz")["input"])
    with torch.inference_mode():
        batched = model(x)[-1]
        single = torch.cat([model(x[i:i + 1])[-1] for i in range(len(x))])
    # At 64 px MKL's small-M GEMMs round differently by batch (1 ulp; 128 px and up are bit-exact, see
    # tests/test_model_backbone.py::test_a_tile_gives_the_same_vector_in_any_batch).
    error = (batched - single).abs().max().item()
    assert error <= 1e-5, error


@pytest.mark.slow
def test_torch_compile_with_fast_scan_matches_golden():
    """torch.compile around the backbone: the fused CPU kernels are opaque to dynamo (graph breaks)."""
    golden = load_golden("dynamicvis_b_img64_hot.npz")
    model = recipe_backbone("b", 64, True).eval()
    model.set_scan("auto", "cpu")
    compiled = torch.compile(model)
    with torch.inference_mode():
        outputs = compiled(torch.from_numpy(golden["input"]))
    for stage, output in enumerate(outputs):
        error = np.abs(output.numpy() - golden[f"stage{stage}"]).max()
        assert error <= _tolerance("b", True, stage), f"compiled stage{stage}: {error:.2e}"


def _pooled(model, x, bf16: bool):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(x)[-1].mean(dim=(2, 3))


def test_bf16_autocast_on_a_cpu_without_native_bf16_keeps_the_projections_float32(models_b64, monkeypatch):
    """Emulated bf16 GEMMs are ~20x slower than float32; under a plain CPU autocast there the backbone
    computes in float32, so its output equals the float32 one bit for bit (and it runs at fp32 speed)."""
    model = models_b64[True]
    x = torch.from_numpy(load_golden("dynamicvis_b_img64_hot.npz")["input"])
    monkeypatch.setenv("DYNAMICVIS_CPU_BF16", "none")
    assert torch.equal(_pooled(model, x, bf16=True), _pooled(model, x, bf16=False))
    monkeypatch.setenv("DYNAMICVIS_CPU_BF16", "native")
    assert not torch.equal(_pooled(model, x, bf16=True), _pooled(model, x, bf16=False))


def test_precision_auto_picks_bf16_only_where_native(monkeypatch):
    from models.runtime import cpu_bf16_support, resolve_precision

    monkeypatch.setenv("DYNAMICVIS_CPU_BF16", "none")
    assert cpu_bf16_support() == "none"
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.warns(RuntimeWarning, match=r"without native bf16.*20x slower"):
        assert resolve_precision("bf16", "cpu") == "fp32"
    monkeypatch.setenv("DYNAMICVIS_CPU_BF16", "native")
    assert resolve_precision("auto", "cpu") == resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.delenv("DYNAMICVIS_CPU_BF16")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert (cpu_bf16_support() != "none") == native
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("size,dtype", [(64, np.uint16), (64, np.float32), (80, np.uint16)])
def test_gpu_input_path_equals_the_numpy_preprocessing(recipe_checkpoint_b64, model_cache, size, dtype):
    """What the embedder does on CUDA (raw uint16 or resized uint8 through a pinned buffer, scaled and
    normalised by torch ops on the device), run here on CPU tensors: bit-identical to ``preprocess``."""
    from models import DynamicVisEmbedder, ModelConfig

    embedder = DynamicVisEmbedder(ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64, device="cpu",
                                              precision="fp32"))
    raw = np.random.default_rng(size).integers(0, 12001, size=(2, 3, size, size)).astype(dtype)
    if dtype == np.float32:
        raw[0, :, :3, :3] = np.nan
    raw[1, 0, 0, 0] = 65535 if dtype == np.uint16 else -5.0
    assert torch.equal(embedder._raw_to_device(raw), torch.from_numpy(embedder.preprocess(raw)))
    assert embedder.metadata["precision"] == "fp32"


@pytest.mark.parametrize("cpu_bf16,expected", [("none", "fp32"), ("native", "bf16")])
def test_embedder_records_the_precision_it_uses(recipe_checkpoint_b64, model_cache, monkeypatch, cpu_bf16, expected):
    from models import DynamicVisEmbedder, ModelConfig

    monkeypatch.setenv("DYNAMICVIS_CPU_BF16", cpu_bf16)
    config = ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64, device="cpu")
    assert config.precision == "auto"
    embedder = DynamicVisEmbedder(config)
    assert embedder.precision == embedder.metadata["precision"] == expected
    assert embedder.metadata["scan"] == ("cpu_fused" if "cpu_fused" in FAST_SCANS else "chunked")


def test_cuda_graph_forward_falls_back_to_eager_when_a_size_cannot_be_captured(monkeypatch):
    """The capture itself needs a GPU (benchmarks/gpu_check.sh checks replay == eager bit for bit there);
    here: a failed capture or a size beyond max_graphs runs eagerly instead of failing the batch."""
    import contextlib

    from models.runtime import CudaGraphForward

    class Double(torch.nn.Module):
        def forward(self, x):
            return (2 * x,)

    graphed = CudaGraphForward(Double(), contextlib.nullcontext, max_graphs=1)
    captures = []

    def failing_capture(x):
        captures.append(tuple(x.shape))
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed, "_capture", failing_capture)
    x = torch.arange(6.0).reshape(2, 3)
    for _ in range(2):
        assert torch.equal(graphed(x)[0], 2 * x)
    assert captures == [(2, 3)]                       # tried once, then remembered as eager
    assert torch.equal(graphed(x[:1])[0], 2 * x[:1])  # beyond max_graphs: eager, no capture attempt
    assert captures == [(2, 3)]
