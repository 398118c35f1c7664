"""What a loaded checkpoint must hold: the backbone's tensors, found in any of the usual layouts (mmengine
``state_dict``, ``model``, a bare dict; ``module.`` / ``backbone.`` prefixes stripped, as timm's loaders strip
``module.``), its arch read from the file name or the stem's width, and exactly the backbone's keys and shapes.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from models.backbone import ARCHS, DynamicVisBackbone
from models.checkpoint.errors import CheckpointError
from models.checkpoint.unpickle import InertGlobal


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, InertGlobal) else type(value).__name__


def extract_backbone_state_dict(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    """Backbone tensors of an mmengine / ``model`` / bare state dict, ``module.`` and ``backbone.`` stripped."""
    state = checkpoint
    if isinstance(checkpoint, Mapping):
        for container in ("state_dict", "model", "module"):
            if isinstance(checkpoint.get(container), Mapping):
                state = checkpoint[container]
                break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{source} holds no state dict (got {_describe(checkpoint)}); expected an mmengine "
                              "checkpoint with 'state_dict', a dict with 'model', or a bare state dict")
    keys = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        while key.startswith("module."):
            key = key[len("module."):]
        keys[key] = value
    if any(key.startswith("backbone.") for key in keys):
        keys = {key[len("backbone."):]: value for key, value in keys.items() if key.startswith("backbone.")}
    elif not any(key == "pos_embed" or key.startswith("layers.") for key in keys):
        sample = sorted(keys)[:8]
        raise CheckpointError(f"{source} contains no DynamicVis backbone weights (no 'backbone.*', 'layers.*' or "
                              f"'pos_embed' keys; first keys: {sample}); is this a DynamicVis checkpoint?")
    not_tensors = {key: _describe(value) for key, value in keys.items() if not isinstance(value, torch.Tensor)}
    if not_tensors:
        shown = dict(list(not_tensors.items())[:8])
        raise CheckpointError(f"{source}: {len(not_tensors)} backbone entries are not tensors, e.g. {shown}; the "
                              "file does not hold plain weights (corrupted, or it pickles objects in their place)")
    return {key: value.detach().to(torch.float32).contiguous() for key, value in keys.items()}


def expected_shapes(arch: str, img_size: int = 512) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = DynamicVisBackbone(arch=arch, img_size=img_size)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def arch_from_shapes(state: Mapping[str, torch.Tensor]) -> str | None:
    stem = state.get("layers.0.0.projection.weight")
    if stem is None:
        return None
    for name, spec in ARCHS.items():
        if stem.shape[0] == spec.channels[0]:
            return name
    return None


def arch_from_file_name(file_name: str) -> str | None:
    tokens = re.split(r"[_\-.\s/]+", Path(file_name).name.lower())
    if "l" in tokens or "large" in tokens:
        return "l"
    if "b" in tokens or "base" in tokens:
        return "b"
    return None


def infer_arch(file_name: str, state: Mapping[str, torch.Tensor]) -> str:
    """``arch='auto'``: from the file name (``_l_`` / large, ``_b_`` / base), else from the stem's width."""
    arch = arch_from_file_name(file_name) or arch_from_shapes(state)
    if arch is None:
        raise CheckpointError(f"cannot tell the DynamicVis arch of {file_name}: neither its name nor its "
                              "'layers.0.0.projection.weight' says; set arch='b' or 'l'")
    return arch


def check_state_dict(state: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    """Raise unless ``state`` has exactly the backbone's keys and shapes (pos_embed: any square grid)."""
    expected = expected_shapes(arch)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = []
    for key, shape in expected.items():
        if key not in state or tuple(state[key].shape) == shape:
            continue
        got = tuple(state[key].shape)
        if key == "pos_embed" and len(got) == 3 and got[0] == 1 and got[2] == shape[2] \
                and math.isqrt(got[1]) ** 2 == got[1]:
            continue  # another img_size: resized bicubically on load
        mismatched.append(f"{key}: checkpoint {list(got)} vs model {list(shape)}")
    if not (missing or unexpected or mismatched):
        return

    def listing(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" ... (+{len(items) - 10} more)" if len(items) > 10 else "")

    parts = [f"{source} does not match DynamicVis arch {arch!r}:"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {listing(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} mis-shaped keys: {listing(mismatched)}")
    shape_arch = arch_from_shapes(state)
    if shape_arch and shape_arch != arch:
        parts.append(f"its tensors look like arch {shape_arch!r}: set arch={shape_arch!r} (or 'auto')")
    else:
        parts.append("is it a truncated file or a checkpoint of another DynamicVis variant (mamba2, other "
                     "path_type)?")
    raise CheckpointError("; ".join(parts))

