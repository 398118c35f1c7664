"""RunInference `ModelHandler` for DynamicVis, reusable in other Beam pipelines.

    handler = DynamicVisModelHandler(ModelConfig.from_env(checkpoint=...), pooling="mean").keyed()
    keyed_pixels | RunInference(handler)        # (key, raw CHW (3,H,W)) -> (key, TileEmbedding)

Design notes:
- One model per worker, shared across SDK processes (`share_model_across_processes`): the model lives in
  one process and the others call it through a proxy, so what crosses the proxy is numpy/plain data only
  (`EmbedderService`).
- Batch size: on GPU the default max batch is sized from the accelerator's memory (the embedder further
  splits a batch into forward passes that fit the device's free memory, each replayed from a CUDA graph);
  on CPU 16.
- A failing batch never fails the bundle: the batch is retried tile by tile and each tile that still fails
  comes back as a `TileEmbedding` with `error` set, so outputs stay 1:1 with inputs (which the keyed handler
  needs) and the caller turns errors into dead letters (stage 'inference').
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Iterable, Optional, Sequence, cast

import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult

LOGGER = logging.getLogger(__name__)
METRICS_NAMESPACE = "dynamicvis"
_GPU_HINT = "type:{};count:1;install-nvidia-driver"
DEFAULT_GPU_HINT = _GPU_HINT.format("nvidia-l4")


CPU_MAX_BATCH_SIZE = 16


def default_max_batch_size(gpu: Optional[str], img_size: Optional[int] = None, arch: Optional[str] = None) -> int:
    """RunInference's max batch size when none is given: on a GPU worker the largest power of two whose
    activations fit the accelerator's memory (``models.runtime.batch_size_for_memory``), on CPU 16
    (throughput is flat beyond a few tiles there). Unknown accelerator types get an L4's 24 GiB."""
    if not gpu:
        return CPU_MAX_BATCH_SIZE
    from models.runtime import accelerator_memory_bytes, batch_size_for_memory

    memory = accelerator_memory_bytes(gpu) or accelerator_memory_bytes("nvidia-l4")
    arch = "l" if str(arch or "").lower() in ("l", "large") else "b"
    return batch_size_for_memory(cast(int, memory), img_size or 512, arch)  # the L4 fallback is always known


def accelerator_hint(gpu: Optional[str]) -> Optional[str]:
    """'nvidia-l4' -> Dataflow's full accelerator string; a full string passes through; None stays None."""
    if not gpu:
        return None
    if "type:" in gpu:
        return gpu
    return _GPU_HINT.format(gpu)


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """The model and how RunInference batches it: what `pipeline.options.ModelOptions` resolves to."""

    model: Any  # models.ModelConfig
    pooling: str = "mean"
    grid: bool = False
    min_batch_size: int = 1
    max_batch_size: int = CPU_MAX_BATCH_SIZE
    gpu: Optional[str] = None


@dataclasses.dataclass
class TileEmbedding:
    """Inference result of one tile: the pooled vector (and grid), or the error that stopped it."""

    embedding: Optional[np.ndarray] = None  # (D,) float32
    grid: Optional[np.ndarray] = None  # (D, h, w) float32
    metadata: Optional[Dict[str, Any]] = None  # the card's metadata of the model that produced it
    error_class: Optional[str] = None
    error_message: Optional[str] = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error_class is None


class EmbedderService:
    """What the shared model process holds: a `models.DynamicVisEmbedder` behind a pickle-friendly API."""

    def __init__(self, config) -> None:
        import os

        import models

        self._embedder = models.DynamicVisEmbedder(config)
        meta = self._embedder.metadata
        LOGGER.info("loaded DynamicVis %s (img %s, scan %s, %s) in process %d", meta["arch"], meta["image_size"],
                    meta["scan"], meta["precision"], os.getpid())

    def embed(self, batch: np.ndarray, pooling: str, grid: bool) -> Dict[str, Optional[np.ndarray]]:
        out = self._embedder.embed(batch, pooling=pooling, grid=grid)
        pooled = np.asarray(out["pooled"], dtype=np.float32)
        fmap = out.get("grid")
        return {"pooled": pooled, "grid": None if fmap is None else np.asarray(fmap, dtype=np.float32)}

    def metadata(self) -> Dict[str, Any]:
        return dict(self._embedder.metadata)


class DynamicVisModelHandler(ModelHandler[np.ndarray, PredictionResult, EmbedderService]):
    """Unkeyed handler of raw Sentinel-2 CHW arrays (B4,B3,B2 surface reflectance); `.keyed()` for pairs.

    Args:
        config: The `models.ModelConfig` each worker builds its embedder from.
        pooling: 'mean' (default) or 'max'.
        grid: Also return each tile's last-stage feature grid.
        min_batch_size: Smallest RunInference batch (default 1).
        max_batch_size: Largest batch; default `default_max_batch_size` (sized from the GPU's memory, 16 on CPU).
        share_across_processes: One model per worker machine, shared by its SDK processes (default True).
        gpu: Accelerator type (e.g. 'nvidia-l4') or Dataflow's full accelerator string; sets the resource hint.
        max_batch_duration_secs: Longest wait to fill a batch (streaming); default Beam's.

    Raises:
        ValueError: An unknown pooling, or not 1 <= min_batch_size <= max_batch_size.
    """

    def __init__(self, config, pooling: str = "mean", grid: bool = False, *, min_batch_size: int = 1,
                 max_batch_size: Optional[int] = None, share_across_processes: bool = True,
                 gpu: Optional[str] = None, max_batch_duration_secs: Optional[int] = None) -> None:
        if max_batch_size is None:
            max_batch_size = default_max_batch_size(gpu, getattr(config, "img_size", None),
                                                    getattr(config, "arch", None))
        from models.config import POOLINGS

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(f"need 1 <= min_batch_size ({min_batch_size}) <= max_batch_size ({max_batch_size})")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs)
        self._config = config
        self._pooling = pooling
        self._grid = grid
        self._share = share_across_processes
        self._accelerator = accelerator_hint(gpu)
        self._model_metadata: Optional[Dict[str, Any]] = None

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> "DynamicVisModelHandler":
        """The handler of a run's inference settings."""
        return cls(settings.model, pooling=settings.pooling, grid=settings.grid,
                   min_batch_size=settings.min_batch_size, max_batch_size=settings.max_batch_size, gpu=settings.gpu)

    # ---- ModelHandler API -------------------------------------------------------------------------
    def load_model(self) -> EmbedderService:
        return EmbedderService(self._config)

    def run_inference(self, batch: Sequence[np.ndarray], model: EmbedderService,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[PredictionResult]:
        if self._model_metadata is None:
            self._model_metadata = model.metadata()
        results: list = [None] * len(batch)
        from models.batching import indices_by_shape  # here: importing models loads torch

        for indices in indices_by_shape(batch):  # the model needs one (H, W) per forward pass
            for index, result in zip(indices, self._embed_group([batch[i] for i in indices], model)):
                results[index] = PredictionResult(batch[index], result)
        return results

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(np.asarray(example).nbytes for example in batch))

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def get_resource_hints(self) -> dict:
        return {"accelerator": self._accelerator} if self._accelerator else {}

    def share_model_across_processes(self) -> bool:
        return self._share

    def model_copies(self) -> int:
        return 1

    # ---- helpers ----------------------------------------------------------------------------------
    def keyed(self) -> KeyedModelHandler:
        """The (key, CHW) -> (key, PredictionResult) handler RunInference takes for keyed input."""
        return KeyedModelHandler(self)

    def _embed_group(self, examples: Sequence[np.ndarray], model: EmbedderService) -> list:
        try:
            return self._split(model.embed(np.stack(examples), self._pooling, self._grid), len(examples))
        except Exception as error:  # noqa: BLE001
            if len(examples) == 1:
                return [self._failure(error, attempts=1)]
            LOGGER.warning("inference of a batch of %d failed (%s: %s); retrying tile by tile",
                           len(examples), type(error).__name__, error)
        results = []
        for example in examples:
            try:
                results.extend(self._split(model.embed(np.stack([example]), self._pooling, self._grid), 1))
            except Exception as error:  # noqa: BLE001
                results.append(self._failure(error, attempts=2))
        return results

    def _split(self, out: Dict[str, Optional[np.ndarray]], n: int) -> list:
        pooled, grid = cast(np.ndarray, out["pooled"]), out.get("grid")  # "pooled" is always there
        if pooled.shape[0] != n:
            raise RuntimeError(f"model returned {pooled.shape[0]} embeddings for {n} tiles")
        return [TileEmbedding(embedding=pooled[i], grid=None if grid is None else grid[i],
                              metadata=self._model_metadata) for i in range(n)]

    @staticmethod
    def _failure(error: BaseException, attempts: int) -> TileEmbedding:
        LOGGER.warning("inference of a tile failed after %d attempt(s): %s: %s",
                       attempts, type(error).__name__, error)
        return TileEmbedding(error_class=type(error).__name__, error_message=str(error)[:2000], attempts=attempts)
