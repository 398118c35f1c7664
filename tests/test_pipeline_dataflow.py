"""The whole graph translated by DataflowRunner offline (Beam's --dry_run=True): GPU hint on the inference step
only, fetch and inference not fused, BigQuery file loads with the explicit schema."""
from __future__ import annotations

import pytest

ACCELERATOR_URN = "beam:resources:accelerator:v1"


def _translate(argv):
    from pipeline.run import parse_and_validate, run

    options, spec = parse_and_validate(argv)
    return run(options, spec).job


@pytest.fixture
def translated(gcs_bucket):
    argv = ["--bbox", "8.0,47.0,8.05,47.05", "--start", "2024-06-01", "--end", "2024-07-01",
            "--output", f"{gcs_bucket}/emb", "--bigquery-table", "my-proj:ds.embeddings", "--gpu", "nvidia-l4",
            "--runner", "DataflowRunner", "--project", "my-proj", "--region", "us-central1",
            "--temp_location", f"{gcs_bucket}/tmp", "--dry_run=True"]
    return _translate(argv)


def test_gpu_hint_on_inference_only_reshuffle_bigquery_file_loads_and_all_writers(translated):
    components = translated.proto_pipeline.components
    hinted = {t.unique_name for t in components.transforms.values()
              if t.environment_id and ACCELERATOR_URN in components.environments[t.environment_id].resource_hints}
    assert hinted and all(name.startswith("Embed/") for name in hinted), sorted(hinted)
    env = next(components.environments[t.environment_id] for t in components.transforms.values()
               if t.unique_name in hinted)
    assert env.resource_hints[ACCELERATOR_URN] == b"type:nvidia-l4;count:1;install-nvidia-driver"

    names = {t.unique_name for t in translated.proto_pipeline.components.transforms.values()}
    for step in ("PlanTiles", "DropExisting", "FetchTiles", "Reshuffle", "Embed", "ToRows", "WriteParquet",
                 "WriteBigQuery", "WriteDeadLetters", "WriteManifest"):
        assert step in names, step
    assert any(name.startswith("WriteBigQuery/WriteToBigQuery/BigQueryBatchFileLoads") for name in names)
    assert not names & {"ExistingKeys", "ExistingBigQueryKeys", "NotInParquet", "NotInBigQuery"}  # no --skip-existing


def test_skip_existing_with_bigquery_joins_both_outputs_keys(gcs_bucket):
    """--skip-existing with --bigquery-table: keys from both outputs, a request skipped only when both have it,
    rows filtered per output; translated without contacting BigQuery (the table is looked up by the workers)."""
    job = _translate(["--bbox", "8.0,47.0,8.05,47.05", "--start", "2024-06-01", "--end", "2024-07-01",
                      "--output", f"{gcs_bucket}/emb", "--bigquery-table", "my-proj:ds.embeddings",
                      "--skip-existing", "--runner", "DataflowRunner", "--project", "my-proj",
                      "--region", "us-central1", "--temp_location", f"{gcs_bucket}/tmp", "--dry_run=True"])
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for step in ("ExistingKeys", "ExistingBigQueryKeys", "InEverySink", "DropExisting", "NotInParquet",
                 "NotInBigQuery", "WriteParquet", "WriteBigQuery"):
        assert step in names, step
