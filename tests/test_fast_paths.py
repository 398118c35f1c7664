"""Golden vectors through the fast backbone paths (fast scans, bf16 autocast), and determinism.

Tolerances (golden README): b hot has no routing ties, so every stage gets the tight 1e-5 max-abs; the
other goldens (l hot included: 8 tied stage-2 blocks) get 1e-5 on stages 0-1 and the backbone suite's
2.5e-5 on stages 2-3 (tied, underflowed routing weights amplify 1-ulp differences there). bf16 autocast: cosine >= 0.999 to float32.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.recipe import recipe_backbone
from models.scan import available_scans
from tests.fixtures.recipe import load_golden

FAST_SCANS = [name for name in available_scans("cpu") if name != "reference"]


def _tolerance(arch: str, hot: bool, stage: int) -> float:
    """b hot has no routing ties at all; l hot has 8 tied stage-2 blocks (golden README)."""
    return 1e-5 if (arch == "b" and hot) or stage < 2 else 2.5e-5


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
    # Different batch sizes use different BLAS blockings: float32 rounding, not a logic difference.
    error = (batched - single).abs().max().item()
    assert error <= 5e-5, error


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
        assert error <= 1e-5, f"compiled stage{stage}: {error:.2e}"
