"""Sentinel-2 RGB preprocessing of the rs-embed DynamicVis adapter, reproduced bit for bit.

raw SR (B4, B3, B2) 0..10000 -> /10000 clipped to [0, 1] -> *255 truncated to uint8 -> Pillow bicubic
resize -> /255, ImageNet mean/std -> float32 (3, img, img). NaN becomes 0 (numpy's x86 cast result).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
S2_SR_SCALE = np.float32(10000.0)


def check_raw_chw(raw_chw: np.ndarray, batched: bool = False) -> np.ndarray:
    """Validate a raw S2 RGB array ((3, H, W), or (B, 3, H, W) when batched) and return it as an ndarray."""
    array = np.asarray(raw_chw)
    layout = "(B, 3, H, W)" if batched else "(3, H, W)"
    if array.ndim != (4 if batched else 3):
        raise ValueError(f"expected raw S2 RGB of shape {layout} (bands B4, B3, B2), got shape {array.shape}")
    if array.shape[-3] != 3:
        raise ValueError(f"expected 3 bands (B4, B3, B2) on axis {-3 + array.ndim}, got {array.shape[-3]} "
                         f"(shape {array.shape}); pass channels-first RGB")
    if array.shape[-1] < 1 or array.shape[-2] < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"expected a numeric array of raw reflectance, got dtype {array.dtype}")
    return array


def raw_to_rgb_uint8(raw_chw: np.ndarray) -> np.ndarray:
    """(3, H, W) raw SR -> (H, W, 3) uint8 exactly as the adapter does (truncation, not rounding)."""
    scaled = np.clip(np.asarray(raw_chw, dtype=np.float32) / S2_SR_SCALE, 0.0, 1.0)
    scaled = np.nan_to_num(scaled, nan=0.0)               # clip keeps NaN; the adapter's cast gave 0
    return (scaled.transpose(1, 2, 0) * np.float32(255.0)).astype(np.uint8)


def resize_rgb_uint8(rgb: np.ndarray, img_size: int) -> np.ndarray:
    """Pillow bicubic resize (torch's bicubic differs by up to 31 grey levels); no-op at the target size."""
    if rgb.shape[:2] == (img_size, img_size):
        return rgb
    from PIL import Image   # here, so the package imports with torch and numpy alone (benchmarks/gpu_check.sh)

    resized = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).resize((img_size, img_size),
                                                                             resample=Image.Resampling.BICUBIC)
    return np.asarray(resized)


def normalize_rgb_uint8(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> ImageNet-normalised float32 (3, H, W)."""
    scaled = rgb.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((scaled - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def preprocess_s2_rgb(raw_chw: np.ndarray, img_size: int = 512) -> np.ndarray:
    """Raw S2 SR -> model input, exactly as the adapter does (x/10000 clipped to 0..1, NaN -> 0, uint8 RGB,
    Pillow bicubic resize, ImageNet normalisation).

    Args:
        raw_chw: Raw S2 SR reflectance (3, H, W), bands B4, B3, B2, 0..10000 scale.
        img_size: Output side in pixels (default 512).

    Returns:
        float32 (3, img_size, img_size).

    Raises:
        ValueError: ``img_size`` < 1, or an array not (3, H, W) or empty.
        TypeError: A non-numeric array.
    """
    if int(img_size) < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    raw = check_raw_chw(raw_chw)
    return normalize_rgb_uint8(resize_rgb_uint8(raw_to_rgb_uint8(raw), int(img_size)))


# ---- the same steps as torch ops, for the GPU (IEEE float32 division/subtraction and truncating casts:
# bit-identical to the numpy functions above; tests/test_model_embedder.py checks it on CPU tensors) ----

def raw_to_rgb_uint8_torch(raw: "torch.Tensor") -> "torch.Tensor":
    """(B, 3, H, W) raw SR (int16 bit pattern of uint16, or float) -> (B, 3, H, W) uint8, as raw_to_rgb_uint8."""
    import torch

    if raw.dtype == torch.int16:                         # uint16 shipped as its bit pattern
        raw = raw.to(torch.int32) & 0xFFFF
    scaled = torch.clamp(raw.to(torch.float32) / float(S2_SR_SCALE), 0.0, 1.0)
    return torch.nan_to_num(scaled, nan=0.0).mul_(255.0).to(torch.uint8)


def normalize_rgb_uint8_torch(rgb: "torch.Tensor") -> "torch.Tensor":
    """(B, 3, H, W) uint8 -> ImageNet-normalised float32 (B, 3, H, W), as normalize_rgb_uint8."""
    import torch

    mean = torch.as_tensor(IMAGENET_MEAN, device=rgb.device)[None, :, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=rgb.device)[None, :, None, None]
    return (rgb.to(torch.float32) / 255.0 - mean) / std
