"""Opt-in: build the official ``DynamicVisBackbone`` class from a user's DynamicVis checkout.

Off unless ``upstream_repo_path`` (RS_EMBED_DYNAMICVIS_REPO_PATH) or ``upstream_auto_download``
(RS_EMBED_DYNAMICVIS_AUTO_DOWNLOAD_REPO=1) is set. Auto-download clones ``upstream_repo_url`` into
``upstream_repo_cache`` and checks out the pinned commit; nothing is cloned otherwise. Weights still go
through the safe loader; only the module code comes from the checkout.
"""
from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from models.config import UPSTREAM_COMMIT, ModelConfig

UPSTREAM_MODULE = "dynamicvis.models.models"
# What the official module imports besides torch/numpy; listed when the import fails.
UPSTREAM_DEPENDENCIES = ("mmengine", "mmcv", "mmdet", "mmpretrain", "mmseg", "opencd", "transformers", "einops")


class UpstreamCodeError(ImportError):
    """The official DynamicVis code could not be found or imported; the message lists what is missing."""


def ensure_checkout(config: ModelConfig) -> Path:
    """The checkout to import from: the given path, or (only if enabled) a clone pinned to UPSTREAM_COMMIT."""
    if config.upstream_repo_path:
        path = Path(config.upstream_repo_path).expanduser()
        if not (path / "dynamicvis" / "models" / "models.py").is_file():
            raise UpstreamCodeError(f"{path} is not a DynamicVis checkout (no dynamicvis/models/models.py); set "
                                    "RS_EMBED_DYNAMICVIS_REPO_PATH to the repository root")
        return path
    if not config.upstream_auto_download:
        raise UpstreamCodeError("upstream code mode needs RS_EMBED_DYNAMICVIS_REPO_PATH, or "
                                "RS_EMBED_DYNAMICVIS_AUTO_DOWNLOAD_REPO=1 to clone it")
    path = Path(config.upstream_repo_cache).expanduser() / f"DynamicVis-{UPSTREAM_COMMIT[:12]}"
    if not (path / "dynamicvis" / "models" / "models.py").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["git", "clone", "--quiet", config.upstream_repo_url, str(path)], check=True,
                           capture_output=True, text=True)
            subprocess.run(["git", "-C", str(path), "checkout", "--quiet", UPSTREAM_COMMIT], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or error
            raise UpstreamCodeError(f"could not clone {config.upstream_repo_url} at {UPSTREAM_COMMIT} into {path}: "
                                    f"{detail}") from None
    return path


def import_upstream_backbone_class(checkout: Path) -> type:
    """``DynamicVisBackbone`` from ``<checkout>/dynamicvis/models/models.py``."""
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        module = importlib.import_module(UPSTREAM_MODULE)
    except Exception as error:
        missing = [name for name in UPSTREAM_DEPENDENCIES if importlib.util.find_spec(name) is None]
        failed = getattr(error, "name", None)
        if failed and failed.split(".")[0] not in missing and isinstance(error, ModuleNotFoundError):
            missing.append(failed)
        raise UpstreamCodeError(
            f"importing the official DynamicVis code from {checkout} failed ({type(error).__name__}: {error}). "
            f"Missing packages: {', '.join(missing) or 'none detected'}. Install them, or unset "
            "RS_EMBED_DYNAMICVIS_REPO_PATH / RS_EMBED_DYNAMICVIS_AUTO_DOWNLOAD_REPO to use the built-in backbone "
            "(same weights and numbers, no extra dependencies).") from None
    if not hasattr(module, "DynamicVisBackbone"):
        raise UpstreamCodeError(f"{checkout}/dynamicvis/models/models.py defines no DynamicVisBackbone")
    return module.DynamicVisBackbone


class UpstreamBackbone(torch.nn.Module):
    """Plain wrapper: mmpretrain's BaseBackbone.train() returns None, which breaks ``model.eval()`` chains."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor):
        return self.backbone(x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.backbone.load_state_dict(state_dict, strict=strict, assign=assign)


def build_upstream_backbone(config: ModelConfig, arch: str) -> torch.nn.Module:
    backbone_class = import_upstream_backbone_class(ensure_checkout(config))
    backbone = backbone_class(arch=arch, img_size=config.img_size, path_type=config.path_type,
                              sampling_scale=dict(type="fixed", val=config.sampling_scale), mamba2=config.mamba2,
                              out_indices=(3,), out_type="featmap", layer_cfgs=dict(use_mambapy=False))
    return UpstreamBackbone(backbone)
