"""Preprocessing (bit for bit), ModelConfig environment handling, the embedder API, upstream-code opt-in."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from models.config import DEFAULT_CHECKPOINT, ModelConfig
from models.embedder import DynamicVisEmbedder
from models.preprocess import preprocess_s2_rgb, raw_to_rgb_uint8, resize_rgb_uint8
from tests.fixtures.recipe import load_golden

ENV_KNOBS = ("HF_REPO", "CKPT_FILE", "IMG", "ARCH", "PATH_TYPE", "SAMPLING_SCALE", "MAMBA2", "REPO_PATH",
             "AUTO_DOWNLOAD_REPO", "REPO_URL", "REPO_CACHE")


@pytest.fixture
def clean_env(monkeypatch):
    for knob in ENV_KNOBS:
        monkeypatch.delenv(f"RS_EMBED_DYNAMICVIS_{knob}", raising=False)
    return monkeypatch


def test_preprocess_reproduces_golden_bit_for_bit():
    golden = load_golden("preprocess_golden.npz")
    rgb = raw_to_rgb_uint8(golden["raw"])
    np.testing.assert_array_equal(rgb, golden["rgb_u8_410"])
    np.testing.assert_array_equal(resize_rgb_uint8(rgb, 512), golden["rgb_u8_512"])
    x = preprocess_s2_rgb(golden["raw"], 512)
    assert x.dtype == np.float32 and x.shape == (3, 512, 512)
    np.testing.assert_array_equal(x.view(np.uint32), golden["model_input"][0].view(np.uint32))


def test_preprocess_nan_negative_and_integer_inputs():
    raw = np.full((3, 32, 32), 5000.0, np.float32)
    raw[0, 0, 0], raw[1, 0, 0], raw[2, 0, 0] = np.nan, -300.0, 20000.0
    rgb = raw_to_rgb_uint8(raw)
    assert rgb[0, 0].tolist() == [0, 0, 255]
    np.testing.assert_array_equal(preprocess_s2_rgb(np.full((3, 32, 32), 5000, np.uint16), 32),
                                  preprocess_s2_rgb(np.full((3, 32, 32), 5000.0), 32))


@pytest.mark.parametrize("array,error,match", [
    (np.zeros((32, 32)), ValueError, r"shape \(3, H, W\)"),
    (np.zeros((4, 32, 32)), ValueError, "3 bands"),
    (np.zeros((32, 32, 3)), ValueError, "3 bands"),
    (np.zeros((3, 0, 5)), ValueError, "empty"),
    (np.full((3, 4, 4), "x"), TypeError, "numeric"),
])
def test_preprocess_rejects_bad_arrays(array, error, match):
    with pytest.raises(error, match=match):
        preprocess_s2_rgb(array, 64)


def test_config_defaults_env_and_explicit_precedence(clean_env):
    assert ModelConfig.from_env() == ModelConfig()
    assert ModelConfig().checkpoint == DEFAULT_CHECKPOINT
    clean_env.setenv("RS_EMBED_DYNAMICVIS_HF_REPO", "me/fork")
    clean_env.setenv("RS_EMBED_DYNAMICVIS_IMG", "256")
    clean_env.setenv("RS_EMBED_DYNAMICVIS_ARCH", "large")
    clean_env.setenv("RS_EMBED_DYNAMICVIS_PATH_TYPE", "forward")
    clean_env.setenv("RS_EMBED_DYNAMICVIS_SAMPLING_SCALE", "0.2")
    clean_env.setenv("RS_EMBED_DYNAMICVIS_MAMBA2", "0")
    config = ModelConfig.from_env(img_size=128, arch=None)
    assert config.checkpoint.startswith("hf://me/fork/pretrain_dynamicvis_b_bf16")
    assert (config.img_size, config.arch, config.path_type, config.sampling_scale, config.mamba2) == \
        (128, "large", "forward", 0.2, False)
    assert not config.use_upstream_code
    clean_env.setenv("RS_EMBED_DYNAMICVIS_CKPT_FILE", "gs://bucket/ckpt.pth")
    assert ModelConfig.from_env().checkpoint == "gs://bucket/ckpt.pth"


@pytest.mark.parametrize("name,value,match", [("IMG", "big", "RS_EMBED_DYNAMICVIS_IMG"),
                                              ("IMG", "100", "multiple of 32"),
                                              ("MAMBA2", "maybe", "boolean"),
                                              ("ARCH", "xl", "arch")])
def test_config_bad_env_values_are_named(clean_env, name, value, match):
    clean_env.setenv(f"RS_EMBED_DYNAMICVIS_{name}", value)
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_env()


def test_fetch_workers_knob(clean_env):
    from models.config import fetch_workers

    clean_env.delenv("RS_EMBED_DYNAMICVIS_FETCH_WORKERS", raising=False)
    assert fetch_workers() == 8
    assert fetch_workers({"RS_EMBED_DYNAMICVIS_FETCH_WORKERS": " 3 "}) == 3
    for value, match in (("0", "must be >= 1"), ("lots", "not a valid int")):
        with pytest.raises(ValueError, match=match):
            fetch_workers({"RS_EMBED_DYNAMICVIS_FETCH_WORKERS": value})


def test_embedder_pooled_grid_and_metadata(recipe_checkpoint_b64, model_cache):
    embedder = DynamicVisEmbedder(ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64, device="cpu",
                                              scan="reference"))
    golden = load_golden("dynamicvis_b_img64_hot.npz")  # any normalised input works here
    raw = np.random.default_rng(3).integers(0, 10001, size=(2, 3, 80, 80)).astype(np.float32)
    raw[0, :, :4, :4] = np.nan
    mean = embedder.embed(raw, pooling="mean", grid=True)
    maxed = embedder.embed(raw, pooling="max")
    assert mean["pooled"].shape == (2, 768) and mean["pooled"].dtype == np.float32
    assert mean["grid"].shape == (2, 768, 2, 2) and maxed["grid"] is None
    np.testing.assert_allclose(mean["pooled"], mean["grid"].mean(axis=(2, 3)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(maxed["pooled"], mean["grid"].max(axis=(2, 3)), rtol=0, atol=0)
    assert (mean["pooling"], maxed["pooling"]) == ("featmap_mean", "featmap_max")
    assert mean["grid_shape"] == maxed["grid_shape"] == (768, 2, 2)
    direct = embedder.embed_preprocessed(np.stack([preprocess_s2_rgb(chw, 64) for chw in raw]), grid=True)
    np.testing.assert_array_equal(direct["grid"], mean["grid"])
    assert embedder.embed_preprocessed(torch.from_numpy(golden["input"]))["pooled"].shape == (2, 768)
    meta = embedder.metadata
    for key in ("model", "arch", "path_type", "sampling_scale", "mamba2", "image_size", "hf_repo", "ckpt_file",
                "ckpt_sha256", "feature_kind", "grid_kind", "pool_source", "scan", "precision", "device"):
        assert key in meta, key
    assert (meta["arch"], meta["image_size"], meta["feature_kind"]) == ("b", 64, "featmap")
    assert meta["grid_kind"] == meta["pool_source"] == "last_stage_featmap" and meta["scan"] == "reference"
    with pytest.raises(ValueError, match="3 bands"):
        embedder.embed(np.zeros((1, 4, 64, 64)))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        embedder.embed(np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match="pooling"):
        embedder.embed(raw, pooling="median")
    with pytest.raises(ValueError, match="expects input of shape"):
        embedder.embed_preprocessed(np.zeros((1, 3, 32, 32), np.float32))


FAKE_UPSTREAM = '''
import torch
from models.backbone import DynamicVisBackbone as _Ours

class DynamicVisBackbone(_Ours):
    """Stand-in for the official class: accepts its extra constructor arguments."""
    def __init__(self, out_type="featmap", layer_cfgs=None, **kwargs):
        super().__init__(scan="reference", **kwargs)
        self.from_fake_checkout = True

    def train(self, mode=True):  # like mmpretrain's BaseBackbone: returns None
        super().train(mode)
'''


def _upstream_modules() -> list[str]:
    """Names of the (fake) official package's modules currently imported."""
    return [name for name in sys.modules if name == "dynamicvis" or name.startswith("dynamicvis.")]


def _fake_checkout(root, source):
    package = root / "dynamicvis" / "models"
    package.mkdir(parents=True)
    (root / "dynamicvis" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(source)
    return root


def test_upstream_code_opt_in_imports_from_checkout(recipe_checkpoint_b64, tmp_path, model_cache, clean_env):
    checkout = _fake_checkout(tmp_path / "DynamicVis", FAKE_UPSTREAM)
    clean_env.setenv("RS_EMBED_DYNAMICVIS_REPO_PATH", str(checkout))
    clean_env.setattr(sys, "path", list(sys.path))
    for name in _upstream_modules():
        clean_env.delitem(sys.modules, name)
    embedder = DynamicVisEmbedder.from_config(checkpoint=str(recipe_checkpoint_b64), img_size=64, device="cpu",
                                              scan="reference")
    assert embedder.model.backbone.from_fake_checkout and embedder.metadata["implementation"] == "upstream"
    golden = load_golden("dynamicvis_b_img64_hot.npz")
    assert embedder.embed_preprocessed(golden["input"])["pooled"].shape == (2, 768)
    for name in _upstream_modules():
        del sys.modules[name]


def test_upstream_code_import_failure_lists_missing_packages(tmp_path, clean_env):
    from models.upstream import UpstreamCodeError, import_upstream_backbone_class

    checkout = _fake_checkout(tmp_path / "Broken", "import mmdet_not_installed_here\n")
    clean_env.setattr(sys, "path", list(sys.path))
    for name in _upstream_modules():
        clean_env.delitem(sys.modules, name)
    with pytest.raises(UpstreamCodeError, match=r"Missing packages: .*mmdet_not_installed_here"):
        import_upstream_backbone_class(checkout)
    for name in _upstream_modules():
        del sys.modules[name]


def test_upstream_code_is_off_by_default_and_never_clones_unasked(clean_env, tmp_path, monkeypatch):
    import subprocess

    from models.upstream import UpstreamCodeError, ensure_checkout

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("git must not run"))
    assert not ModelConfig().use_upstream_code
    with pytest.raises(UpstreamCodeError, match="AUTO_DOWNLOAD_REPO=1"):
        ensure_checkout(ModelConfig())
    with pytest.raises(UpstreamCodeError, match="not a DynamicVis checkout"):
        ensure_checkout(ModelConfig(upstream_repo_path=str(tmp_path)))
