"""DynamicVisModelHandler: keyed RunInference, batching options, GPU hint, and per-tile retry + dead letters."""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from tiles.records import Tile, TileRequest, TimeWindow
from transforms import schema
from transforms.inference import DEFAULT_GPU_HINT, DynamicVisModelHandler, accelerator_hint
from transforms.write import DEAD_LETTER_TAG, ToRows

POISON = 4242  # a tile whose pixels all have this value makes the stand-in model raise


class PoisonSensitiveModel:
    """Stand-in for the shared EmbedderService (same two methods): the mean pixel as a 4-d vector, and an error
    for any batch that holds a poisoned tile, so the handler's retry path is exercised deterministically."""

    calls = []

    def embed(self, batch, pooling, grid):
        PoisonSensitiveModel.calls.append(len(batch))
        if any(np.all(tile == POISON) for tile in batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        means = batch.reshape(len(batch), -1).mean(axis=1).astype(np.float32)
        return {"pooled": np.repeat(means[:, None], 4, axis=1), "grid": None}

    def metadata(self):
        return {"arch": "b", "image_size": 64, "path_type": "forward_reverse_mean", "sampling_scale": 0.1,
                "mamba2": False, "hf_repo": None, "ckpt_file": "stand-in", "ckpt_sha256": None}


class StandInHandler(DynamicVisModelHandler):
    def load_model(self):
        return PoisonSensitiveModel()


def _meta(i: int) -> schema.TileMeta:
    request = TileRequest(Tile(32632, i, 100, 8, 10.0), TimeWindow(dt.date(2024, 6, 1), dt.date(2024, 7, 1)), "r")
    return schema.TileMeta(request, valid_fraction=1.0, n_scenes=3)


def test_a_failing_batch_is_retried_per_tile_and_only_the_bad_tile_is_dead_lettered():
    PoisonSensitiveModel.calls.clear()
    values = [10, 20, POISON, 40, 50]
    inputs = [(_meta(i), np.full((3, 8, 8), v, np.uint16)) for i, v in enumerate(values)]
    handler = StandInHandler(config=None, min_batch_size=5, max_batch_size=5, share_across_processes=False)
    run = schema.RunInfo("test", "median", 30.0, "mean", dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    with beam.Pipeline() as p:
        out = (p | beam.Create(inputs)
               | RunInference(handler.keyed())
               | beam.ParDo(ToRows(run)).with_outputs(DEAD_LETTER_TAG, main="rows"))
        assert_that(out.rows | "Vec" >> beam.Map(lambda r: (r["tile_id"], r["embedding"][0])),
                    equal_to([(_meta(i).request.tile.tile_id, float(v)) for i, v in enumerate(values)
                              if v != POISON]), label="rows")
        assert_that(out[DEAD_LETTER_TAG] | "Letter" >> beam.Map(lambda d: (d.tile_id, d.stage, d.error_class,
                                                                          d.attempts)),
                    equal_to([(_meta(2).request.tile.tile_id, "inference", "RuntimeError", 2)]), label="letters")
    assert PoisonSensitiveModel.calls[0] == 5 and PoisonSensitiveModel.calls[1:] == [1] * 5


def test_handler_results_are_one_per_input_in_order():
    handler = StandInHandler(config=None, share_across_processes=False)
    batch = [np.full((3, 8, 8), v, np.uint16) for v in (1, POISON, 3)] + [np.full((3, 16, 16), 7, np.uint16)]
    results = list(handler.run_inference(batch, PoisonSensitiveModel()))
    assert [r.inference.ok for r in results] == [True, False, True, True]
    assert [r.inference.embedding[0] for r in results if r.inference.ok] == [1.0, 3.0, 7.0]
    assert results[1].inference.error_message.startswith("CUDA error")


def test_batching_sharing_and_gpu_hint_options():
    handler = DynamicVisModelHandler(config=None, min_batch_size=2, max_batch_size=32, gpu="nvidia-l4")
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 32}
    assert handler.share_model_across_processes() and handler.model_copies() == 1
    assert handler.get_resource_hints() == {"accelerator": DEFAULT_GPU_HINT}
    keyed = handler.keyed()
    assert keyed.get_resource_hints() == {"accelerator": DEFAULT_GPU_HINT}
    assert keyed.share_model_across_processes()
    assert DynamicVisModelHandler(config=None).get_resource_hints() == {}
    full = "type:nvidia-tesla-t4;count:2;install-nvidia-driver"
    assert accelerator_hint(full) == full
    with pytest.raises(ValueError, match="pooling"):
        DynamicVisModelHandler(config=None, pooling="median")
    with pytest.raises(ValueError, match="batch"):
        DynamicVisModelHandler(config=None, min_batch_size=8, max_batch_size=4)


def test_real_model_through_the_handler_matches_the_embedder(recipe_checkpoint_b64, model_cache):
    import models

    config = models.ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64)
    handler = DynamicVisModelHandler(config, pooling="max", grid=True, share_across_processes=False)
    service = handler.load_model()
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 3000, (3, 32, 32), dtype=np.uint16) for _ in range(3)]
    results = [r.inference for r in handler.run_inference(tiles, service)]
    direct = models.DynamicVisEmbedder(config).embed(np.stack(tiles), pooling="max", grid=True)
    np.testing.assert_allclose(np.stack([r.embedding for r in results]), direct["pooled"], rtol=1e-5, atol=1e-6)
    assert results[0].grid.shape == direct["grid"].shape[1:]
    assert results[0].metadata["arch"] == "b" and results[0].metadata["image_size"] == 64
    # the precision that really ran ('auto' resolved for this CPU) reaches the output rows
    run = schema.RunInfo("test", "median", 30.0, "max", dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    row = schema.encode_row(_meta(0), results[0].embedding, results[0].metadata, run)
    assert row["precision"] == results[0].metadata["precision"] == direct_precision(config)


def direct_precision(config) -> str:
    import torch

    from models.runtime import resolve_precision

    return resolve_precision(config.precision, torch.device("cpu"))


def test_default_batch_size_comes_from_the_accelerator_memory():
    from models.runtime import accelerator_memory_bytes, batch_size_for_memory
    from transforms.inference import CPU_MAX_BATCH_SIZE, default_max_batch_size

    assert DynamicVisModelHandler(config=None).batch_elements_kwargs()["max_batch_size"] == CPU_MAX_BATCH_SIZE
    l4, h200 = default_max_batch_size("nvidia-l4"), default_max_batch_size("type:nvidia-h200-141gb;count:1")
    assert DynamicVisModelHandler(config=None, gpu="nvidia-l4").batch_elements_kwargs()["max_batch_size"] == l4
    assert accelerator_memory_bytes("type:nvidia-l4;count:1;install-nvidia-driver") == 24 * 2**30
    assert 16 < l4 < h200 <= 256 and default_max_batch_size("nvidia-tesla-t4") < l4
    assert default_max_batch_size("nvidia-l4", img_size=256) == 4 * l4 or default_max_batch_size(
        "nvidia-l4", img_size=256) == 256
    assert default_max_batch_size("nvidia-l4", arch="large") <= l4
    assert default_max_batch_size("some-new-gpu") == l4              # unknown type: an L4's memory
    # powers of two that fit ~70% of what is left after the reserve; never below 1
    for gib in (1, 3, 8, 24, 80, 141):
        batch = batch_size_for_memory(gib * 2**30)
        assert batch & (batch - 1) == 0 and batch >= 1
        if batch > 1:
            assert batch * 160 * 2**20 <= 0.7 * (gib - 2) * 2**30
