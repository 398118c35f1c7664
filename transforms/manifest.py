"""`<output>/manifest.json`, written once every write of the run has finished."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Dict, List, Mapping

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.durable_write import WrittenFile, join_path


class _WriteManifest(beam.DoFn):
    def __init__(self, path: str, base: Mapping[str, Any]) -> None:
        self._path = path
        self._base = dict(base)

    def process(self, _, counts: Dict[str, int], model: List[Dict[str, Any]], embedding_files: List[WrittenFile],
                dead_letter_files: List[WrittenFile]):
        manifest = dict(self._base)
        rows_written = sum(rows for _, rows in embedding_files)
        manifest["counts"] = {**manifest.get("counts", {}), **counts, "rows_written": rows_written,
                              "dead_letters": sum(letters for _, letters in dead_letter_files)}
        manifest["counts"]["rows_in_output"] = manifest["counts"].get("rows_before_run", 0) + rows_written
        manifest["model"] = model[0] if model else None
        manifest["files"] = {"embeddings": sorted({path for path, _ in embedding_files}),
                             "dead_letters": sorted({path for path, _ in dead_letter_files})}
        manifest["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
        with FileSystems.create(self._path, mime_type="application/json") as handle:
            handle.write(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
        yield self._path


class WriteManifest(beam.PTransform):
    """Writes `<output>/manifest.json` once all writes have finished: `base` plus counts, model and files.

    Applied to a dict of PCollections: each name in `counted` is counted; 'model' holds model-metadata
    dicts (one is kept); 'embedding_files' and 'dead_letter_files' are the (path, rows) the durable writers
    output: their rows are the durable counts (`rows_written`, `dead_letters`), and waiting for them makes
    the manifest the last thing written.

    Args:
        output: The run's --output, a local directory or gs:// prefix.
        base: The run's recorded settings, the manifest's first keys.
        counted: Names of the input PCollections whose elements are counted.
    """

    def __init__(self, output: str, base: Mapping[str, Any], counted: List[str]) -> None:
        super().__init__()
        self._path = join_path(output, "manifest.json")
        self._base = base
        self._counted = list(counted)

    def expand(self, inputs: Dict[str, Any]):
        counted = [inputs[name] | f"Count_{name}" >> beam.combiners.Count.Globally()
                   | f"Name_{name}" >> beam.Map(lambda n, name=name: (name, n)) for name in self._counted]
        counts = counted | "Counts" >> beam.Flatten()
        model = (inputs["model"] | "OneModelMeta" >> beam.combiners.Sample.FixedSizeGlobally(1)
                 | "Unlist" >> beam.FlatMap(lambda xs: xs))
        return (inputs["model"].pipeline
                | "Once" >> beam.Create([None])
                | "WriteManifestJson" >> beam.ParDo(
                    _WriteManifest(self._path, self._base),
                    counts=beam.pvalue.AsDict(counts), model=beam.pvalue.AsList(model),
                    embedding_files=beam.pvalue.AsList(inputs["embedding_files"]),
                    dead_letter_files=beam.pvalue.AsList(inputs["dead_letter_files"])))
