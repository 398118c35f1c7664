"""Rows: inference results -> output row dicts (or dead letters), and the model columns the manifest records."""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Dict, Mapping, Tuple, cast

import apache_beam as beam

from tiles.records import DeadLetter
from transforms import schema

if TYPE_CHECKING:  # (importing inference would pull torch into every reader of output files)
    import numpy as np

    from transforms.inference import TileEmbedding

DEAD_LETTER_TAG = "dead_letter"
KEY_COLUMNS = ("tile_id", "start_date", "end_date")  # what identifies a row: tile and time window


class ToRows(beam.DoFn):
    """(TileMeta, PredictionResult[TileEmbedding]) -> output row dict, or a DeadLetter (stage 'inference').

    Args:
        run: The per-run values every row carries.
        grid: Also write each tile's feature grid.
    """

    def __init__(self, run: schema.RunInfo, grid: bool = False) -> None:
        self._run = run
        self._grid = grid

    def process(self, keyed: Tuple[schema.TileMeta, Any]):
        meta, prediction = keyed
        # A PredictionResult (apache_beam.ml.inference, not imported here: it pulls in torch) or the embedding.
        result: "TileEmbedding" = getattr(prediction, "inference", prediction)
        if not result.ok:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter.for_request(
                meta.request, "inference", result.error_message or "", result.attempts,
                error_class=result.error_class))
            return
        try:
            yield schema.encode_row(meta, cast("np.ndarray", result.embedding), result.metadata or {}, self._run,
                                    grid=result.grid if self._grid else None)
        except Exception as error:  # noqa: BLE001
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter.for_request(meta.request, "encode", error))


def _as_date(value) -> dt.date:
    """A DATE as read back: datetime.date (Parquet, google-cloud-bigquery), a datetime or an ISO string."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def key_of_row(row: Mapping[str, Any]) -> str:
    """`schema.row_key` of an output row (as written, or as read back from Parquet or BigQuery)."""
    return schema.row_key(row["tile_id"], _as_date(row["start_date"]), _as_date(row["end_date"]))


def row_model_metadata(row: Mapping[str, Any]) -> Dict[str, Any]:
    """The model columns of a row, for the manifest."""
    fields = ("model", "arch", "checkpoint_repo", "checkpoint_file", "checkpoint_sha256", "img_size",
              "path_type", "sampling_scale", "mamba2", "pooling", "precision", "dim")
    return {name: row.get(name) for name in fields}


def request_from_pixels(pixels) -> Tuple[schema.TileMeta, Any]:
    """TilePixels -> (TileMeta, chw): the key carries everything a row needs except the embedding."""
    return (schema.TileMeta(request=pixels.request, valid_fraction=float(pixels.valid_fraction),
                            n_scenes=pixels.n_scenes), pixels.chw)
