"""Building the backbone from a ModelConfig, and the embedder API the pipeline uses."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.backbone import DynamicVisBackbone
from models.checkpoint import CheckpointInfo, load_backbone_weights
from models.config import POOLINGS, ModelConfig
from models.preprocess import (check_raw_chw, normalize_rgb_uint8_torch, preprocess_s2_rgb, raw_to_rgb_uint8,
                               raw_to_rgb_uint8_torch, resize_rgb_uint8)
from models.runtime import (CudaGraphForward, autocast_for, configure_numerics, device_batch_size,
                            resolve_precision)

FEATURE_KIND = "featmap"             # what the backbone returns: a feature map, pooled spatially (not tokens)
GRID_KIND = "last_stage_featmap"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available; use device='cpu' or 'auto'")
    return torch.device(device)


def load_backbone(config: ModelConfig) -> tuple[torch.nn.Module, CheckpointInfo]:
    """The configured backbone with checked official weights, in eval mode on its device."""
    state, info = load_backbone_weights(config.checkpoint, config.arch, config.resolved_cache_dir)
    device = resolve_device(config.device)
    if config.use_upstream_code:
        from models.upstream import build_upstream_backbone

        model = build_upstream_backbone(config, info.arch)
    else:
        model = DynamicVisBackbone(arch=info.arch, img_size=config.img_size, path_type=config.path_type,
                                   sampling_scale=config.sampling_scale, mamba2=config.mamba2, out_indices=(3,),
                                   scan="reference")
        model.set_scan(config.scan, device)
    model.load_state_dict(state, strict=True)
    # Weights stay float32 for both precisions: bf16 runs under autocast (models.runtime.autocast_for),
    # so routing, norms and the scan keep float32 while the matmuls and convs use bf16.
    configure_numerics(device)
    return model.to(device=device).eval(), info


def _pinned_copy(array: np.ndarray, device: torch.device, buffers: dict) -> torch.Tensor:
    """Host array -> device through a reused page-locked buffer (an asynchronous DMA copy)."""
    key = (array.shape, array.dtype.str)
    buffer = buffers.get(key)
    if buffer is None:
        buffer = buffers[key] = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype,
                                            pin_memory=device.type == "cuda")
    buffer.copy_(torch.from_numpy(array))
    return buffer.to(device, non_blocking=True)


def raw_to_device(raw_chw_batch: np.ndarray, img_size: int, device: torch.device, buffers: dict) -> torch.Tensor:
    """Raw tiles (B, 3, H, W) -> normalised model input on ``device``, bit-identical to ``preprocess_s2_rgb``.

    Tiles already at img_size travel as raw uint16 (as int16 bits) through pinned memory and are scaled on
    the device; others are resized on the CPU (Pillow bicubic is part of the numerics) and travel as uint8.
    """
    batch = check_raw_chw(raw_chw_batch, batched=True)
    if batch.shape[-2:] == (img_size, img_size):
        host = batch.view(np.int16) if batch.dtype == np.uint16 else batch.astype(np.float32, copy=False)
        rgb = raw_to_rgb_uint8_torch(_pinned_copy(np.ascontiguousarray(host), device, buffers))
    else:
        host = np.stack([resize_rgb_uint8(raw_to_rgb_uint8(chw), img_size).transpose(2, 0, 1) for chw in batch])
        rgb = _pinned_copy(np.ascontiguousarray(host), device, buffers)
    return normalize_rgb_uint8_torch(rgb)


class DynamicVisEmbedder:
    """Holds one backbone; embeds batches of raw S2 RGB tiles into pooled vectors and last-stage grids.

    Args:
        config: The model settings; default ``ModelConfig.from_env()``. The checkpoint is fetched, checked
            and loaded here, once.

    Raises:
        CheckpointError: The checkpoint cannot be found, read or is refused (e.g. pickled code).
        UpstreamCodeError: The opt-in upstream code cannot be used.
        ValueError: Settings that do not fit the checkpoint.
    """

    def __init__(self, config: ModelConfig | None = None):
        self.config = config or ModelConfig.from_env()
        self.model, self.checkpoint = load_backbone(self.config)
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        self.precision = resolve_precision(self.config.precision, self.device)   # 'auto' -> what runs here
        # CUDA: forward batches that fit the device, each replayed from a captured graph (not launch-bound).
        self.max_forward_batch = device_batch_size(self.device, self.config.img_size, self.checkpoint.arch)
        self._graphs = (CudaGraphForward(self.model, lambda: autocast_for(self.precision, self.device, False))
                        if self.device.type == "cuda" and not self.config.use_upstream_code else None)
        self._pinned: dict = {}

    @classmethod
    def from_config(cls, config: ModelConfig | None = None, **overrides) -> "DynamicVisEmbedder":
        """From a config, or from the environment plus explicit overrides.

        Args:
            config: The settings; default ``ModelConfig.from_env(**overrides)``.
            **overrides: ModelConfig fields replaced in ``config`` (or passed to ``from_env``).

        Returns:
            The embedder, its checkpoint loaded.
        """
        return cls(config.replace(**overrides) if config else ModelConfig.from_env(**overrides))

    @property
    def metadata(self) -> dict[str, Any]:
        """The adapter card's model metadata (per-call keys such as ``pooling`` come with each result).

        Returns:
            A dict: model, arch, path_type, sampling_scale, mamba2, image_size, checkpoint (hf_repo, ckpt_file,
            ckpt_sha256, checkpoint), feature layout (feature_kind, grid_kind, pool_source), and how it runs
            (scan, precision, device, implementation).
        """
        info, config = self.checkpoint, self.config
        return {
            "model": "dynamicvis", "arch": info.arch, "path_type": config.path_type,
            "sampling_scale": config.sampling_scale, "mamba2": config.mamba2, "image_size": config.img_size,
            "hf_repo": info.repo, "ckpt_file": info.file, "ckpt_sha256": info.sha256, "checkpoint": info.source,
            "feature_kind": FEATURE_KIND, "grid_kind": GRID_KIND, "pool_source": GRID_KIND,
            "scan": getattr(self.model, "scan", config.scan), "precision": self.precision,
            "device": str(self.device), "implementation": "upstream" if config.use_upstream_code else "native",
        }

    @staticmethod
    def pooling_name(pooling: str) -> str:
        """``'mean'`` -> ``'featmap_mean'``, ``'max'`` -> ``'featmap_max'`` (the card's ``pooling`` values)."""
        try:
            return POOLINGS[pooling]
        except KeyError:
            raise ValueError(f"pooling={pooling!r}: use one of {sorted(POOLINGS)}") from None

    def preprocess(self, raw_chw_batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) raw SR -> (B, 3, img, img) normalised float32 (NaN -> 0, clipped to 0..10000)."""
        batch = check_raw_chw(raw_chw_batch, batched=True)
        return np.stack([preprocess_s2_rgb(chw, self.config.img_size) for chw in batch])

    def embed(self, raw_chw_batch: np.ndarray, pooling: str = "mean", grid: bool = False) -> dict:
        """Embed raw S2 RGB tiles (preprocessed as the adapter does, then the backbone).

        Args:
            raw_chw_batch: Raw S2 SR reflectance (B, 3, H, W), bands B4, B3, B2, 0..10000 scale; any H, W
                (resized to ``config.img_size``), NaN counts as 0.
            pooling: 'mean' (default) or 'max' over the last-stage feature map.
            grid: Also return the feature maps.

        Returns:
            dict(pooled=(B, D) float32, grid=(B, D, h, w) float32 or None, pooling='featmap_mean' |
            'featmap_max', grid_shape=(D, h, w)).

        Raises:
            ValueError: An unknown pooling, or an array that is not (B, 3, H, W) (the message names its shape).
            TypeError: A non-numeric array.
        """
        self.pooling_name(pooling)
        if self.device.type == "cuda":
            return self._embed_on_device(self._raw_to_device(raw_chw_batch), pooling, grid)
        return self.embed_preprocessed(self.preprocess(raw_chw_batch), pooling=pooling, grid=grid)

    def _raw_to_device(self, raw_chw_batch: np.ndarray) -> torch.Tensor:
        return raw_to_device(raw_chw_batch, self.config.img_size, self.device, self._pinned)

    @torch.inference_mode()
    def embed_preprocessed(self, x: np.ndarray | torch.Tensor, pooling: str = "mean", grid: bool = False) -> dict:
        """Embed inputs already preprocessed (``preprocess`` / ``preprocess_s2_rgb``), skipping that step.

        Args:
            x: ImageNet-normalised float32 (B, 3, img_size, img_size), an array or a tensor.
            pooling: 'mean' (default) or 'max' over the last-stage feature map.
            grid: Also return the feature maps.

        Returns:
            The same dict as ``embed``.

        Raises:
            ValueError: An unknown pooling, or ``x`` not 4-D.
        """
        self.pooling_name(pooling)
        tensor = torch.as_tensor(x)
        if tensor.ndim != 4:
            raise ValueError(f"expected a batch (B, 3, {self.config.img_size}, {self.config.img_size}), "
                             f"got shape {tuple(tensor.shape)}")
        return self._embed_on_device(tensor.to(device=self.device, dtype=self.dtype), pooling, grid)

    @torch.inference_mode()
    def _embed_on_device(self, x: torch.Tensor, pooling: str, grid: bool) -> dict:
        step = self.max_forward_batch or len(x)
        featmap = torch.cat([self._forward(x[i:i + step]) for i in range(0, len(x), step)])
        pooled = featmap.mean(dim=(2, 3)) if pooling == "mean" else featmap.amax(dim=(2, 3))
        return {"pooling": POOLINGS[pooling], "grid_shape": tuple(int(n) for n in featmap.shape[1:]),
                "pooled": pooled.cpu().numpy().astype(np.float32),
                "grid": featmap.cpu().numpy().astype(np.float32) if grid else None}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage feature map (float32) of one forward batch."""
        if self._graphs is not None:
            return self._graphs(x.contiguous())[-1].float()
        with autocast_for(self.precision, self.device):
            return self.model(x)[-1].float()
