"""Deterministic "recipe" weights of the golden README (base and hot), and official-format checkpoints.

Every tensor is derived from its own key (seed = crc32(key)), so the recipe is order independent and
anybody can rebuild the weights the golden outputs were computed with. Used by tests and benchmarks.
"""
from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import numpy as np
import torch

_STAGE_NORM = re.compile(r"layers\.\d+\.2\.(weight|bias)$")


def recipe_rule(key: str) -> str:
    """Name of the first recipe rule that matches ``key`` (A_log, D, dt_bias, gate, norm_weight, norm_bias, default)."""
    stage_norm = _STAGE_NORM.fullmatch(key)
    if key.endswith("A_log"):
        return "A_log"
    if key.endswith(".D"):
        return "D"
    if key.endswith("dt_proj.bias"):
        return "dt_bias"
    if key.endswith("spatial_gate.weight"):
        return "gate"
    if key.endswith("norm.weight") or (stage_norm and stage_norm.group(1) == "weight"):
        return "norm_weight"
    if key.endswith("norm.bias") or (stage_norm and stage_norm.group(1) == "bias"):
        return "norm_bias"
    return "default"


def recipe_tensor(key: str, shape: tuple[int, ...], hot: bool = False) -> np.ndarray:
    """The float32 recipe value of one state_dict entry."""
    seed = zlib.crc32(key.encode("utf-8"))
    z = np.random.default_rng(seed).standard_normal(size=shape).astype(np.float32)
    rule = recipe_rule(key)
    if rule == "A_log":
        row = np.log(np.arange(1, shape[-1] + 1, dtype=np.float64)).astype(np.float32)
        return np.broadcast_to(row, shape).copy()
    if rule in ("D", "norm_weight"):
        return (1.0 + 0.1 * z).astype(np.float32)
    if rule == "norm_bias":
        return (0.1 * z).astype(np.float32)
    if rule == "dt_bias":
        u = np.random.default_rng(seed + 1).random(shape)
        dt = np.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)
    if hot and len(shape) >= 2 and key != "pos_embed":             # default or gate, matrices only
        fan_in = int(np.prod(shape[1:]))
        return (z / np.float32(math.sqrt(fan_in))).astype(np.float32)
    if rule == "gate":
        return z
    return (0.02 * z).astype(np.float32)


def recipe_state_dict(arch: str = "b", img_size: int = 64, hot: bool = False) -> dict[str, torch.Tensor]:
    """Recipe weights for every key of ``DynamicVisBackbone(arch, img_size).state_dict()``."""
    from models.backbone import DynamicVisBackbone

    with torch.device("meta"):
        template = DynamicVisBackbone(arch=arch, img_size=img_size).state_dict()
    return {key: torch.from_numpy(recipe_tensor(key, tuple(t.shape), hot)) for key, t in template.items()}


def recipe_backbone(arch: str = "b", img_size: int = 64, hot: bool = False, **kwargs):
    """A DynamicVisBackbone in eval mode loaded (strictly) with recipe weights."""
    from models.backbone import DynamicVisBackbone

    model = DynamicVisBackbone(arch=arch, img_size=img_size, **kwargs)
    model.load_state_dict(recipe_state_dict(arch, img_size, hot), strict=True)
    return model.eval()


def write_official_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor] | None = None, *,
                              arch: str = "b", img_size: int = 512, hot: bool = False) -> Path:
    """Write ``state_dict`` (default: recipe weights) the way DynamicVis training saves checkpoints.

    Real ``torch.save`` of an mmengine-style dict: ``meta``, ``state_dict`` (``backbone.``-prefixed keys
    plus ``neck.``/``head.`` keys), ``message_hub`` holding a real mmengine ``HistoryBuffer`` (so the
    pickle references numpy reconstructors and ``builtins.getattr`` like the released files), and
    ``optimizer`` state.
    """
    from mmengine.logging import HistoryBuffer

    if state_dict is None:
        state_dict = recipe_state_dict(arch, img_size, hot)
    full = {f"backbone.{k}": v for k, v in state_dict.items()}
    channels = state_dict["layers.3.2.weight"].shape[0] if "layers.3.2.weight" in state_dict else 768
    full["neck.proj.weight"] = torch.zeros(256, channels)
    full["head.fc.weight"] = torch.zeros(10, 256)
    full["head.fc.bias"] = torch.zeros(10)
    loss = HistoryBuffer()
    for step, value in enumerate((0.9, 0.7, 0.6)):
        loss.update(value, count=step + 1)
    checkpoint = {
        "meta": {"epoch": 170, "iter": 12345, "mmengine_version": "0.10.7", "seed": 2024,
                 "cfg": "model = dict(type='DynamicVisPretrainClassifier')", "dataset_meta": {"classes": ("a",)}},
        "state_dict": full,
        "message_hub": {"log_scalars": {"train/loss": loss}, "runtime_info": {"epoch": 170, "max_epochs": 200},
                        "resumed_keys": {"epoch": True}},
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(4), "step": torch.tensor(5.0)}},
                      "param_groups": [{"lr": 1e-4, "params": [0], "betas": (0.9, 0.999)}]},
        "param_schedulers": [{"base_lrs": [1e-4], "last_epoch": 170}],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
