"""The Earth Engine budget per process, from the runner and its options (earth_engine.quota.ee_budget), and
the `--dry-run --json` plan that reports it."""
from __future__ import annotations

import json

import pytest

from earth_engine.quota import QuotaError, ee_budget, machine_vcpus
from pipeline.run import launch, parse_and_validate

TIME = ["--start", "2024-06-01", "--end", "2024-07-01"]


def test_machine_vcpus():
    assert machine_vcpus("n2-standard-4") == 4
    assert machine_vcpus("g2-standard-8") == 8
    assert machine_vcpus("n2-custom-8-32768") == 8
    assert machine_vcpus("e2-medium") == 2
    with pytest.raises(QuotaError, match="--ee-workers"):
        machine_vcpus("mystery")


@pytest.mark.parametrize("runner,options,processes,concurrency,rate", [
    ("DirectRunner", {}, 1, 40, 100.0),
    ("DirectRunner", {"direct_running_mode": "multi_threading", "direct_num_workers": 4}, 1, 40, 100.0),
    ("DirectRunner", {"direct_running_mode": "multi_processing", "direct_num_workers": 4}, 4, 10, 25.0),
    ("DirectRunner", {"direct_running_mode": "multi_processing", "direct_num_workers": 0}, 3, 13, 100 / 3),
    ("PrismRunner", {}, 1, 40, 100.0),
    ("DataflowRunner", {"max_num_workers": 10, "machine_type": "n2-standard-4"}, 40, 1, 2.5),
    ("DataflowRunner", {"max_num_workers": 5, "machine_type": "n2-standard-4",
                        "experiments": ["use_runner_v2", "no_use_multiple_sdk_containers"]}, 5, 8, 20.0),
    ("DataflowRunner", {"num_workers": 2, "machine_type": "n2-standard-8"}, 16, 2, 6.25),
    ("DataflowRunner", {"max_num_workers": 3, "worker_machine_type": "g2-standard-8"}, 24, 1, 100 / 24),
    ("apache_beam.runners.dataflow.dataflow_runner.DataflowRunner", {"max_num_workers": 2}, 2, 20, 50.0),
])
def test_budget_per_runner_never_exceeds_the_project_quota(runner, options, processes, concurrency, rate):
    budget = ee_budget(runner, options, 40, 100.0, cpu_count=3)
    assert (budget.processes, budget.max_concurrency_per_process) == (processes, concurrency)
    assert budget.requests_per_s_per_process == pytest.approx(rate)
    assert budget.processes * budget.max_concurrency_per_process <= 40
    assert budget.processes * budget.requests_per_s_per_process <= 100 + 1e-9


def test_dataflow_without_a_ceiling_is_capped_to_the_quota():
    budget = ee_budget("DataflowRunner", {"machine_type": "n2-standard-4"}, 40, 100.0)
    assert budget.set_max_num_workers == 10 and budget.processes == 40 and budget.max_concurrency_per_process == 1


def test_more_processes_than_the_quota_or_explicit_overdraw_is_refused():
    with pytest.raises(QuotaError, match="lower --max_num_workers"):
        ee_budget("DataflowRunner", {"max_num_workers": 20, "machine_type": "n2-standard-4"}, 40, 100.0)
    with pytest.raises(QuotaError, match="use at most 4"):
        ee_budget("DataflowRunner", {"max_num_workers": 10}, 40, 100.0, max_concurrency=5)
    with pytest.raises(QuotaError, match="requests/s"):
        ee_budget("DirectRunner", {}, 40, 100.0, processes=4, requests_per_s=30)
    assert ee_budget("DirectRunner", {}, 400, 1000.0, processes=8).max_concurrency_per_process == 50


def test_pipeline_spec_takes_its_limits_from_the_budget():
    _, spec = parse_and_validate(["--bbox", "8,47,8.1,47.1", *TIME, "--dry-run", "--runner", "DataflowRunner",
                                  "--max_num_workers", "10", "--machine_type", "n2-standard-4",
                                  "--ee-quota-concurrent", "80", "--ee-quota-rps", "200"])
    assert (spec.s2.concurrency, spec.s2.rate) == (2, 5.0)
    _, spec = parse_and_validate(["--bbox", "8,47,8.1,47.1", *TIME, "--dry-run", "--direct_running_mode",
                                  "multi_processing", "--direct_num_workers", "4"])
    assert (spec.s2.concurrency, spec.s2.rate) == (10, 25.0)


def test_dry_run_json_of_a_dataflow_launch(capsys):
    argv = ["--bbox", "5.8,47.2,8.1,49.0", *TIME, "--dry-run", "--json", "--runner", "DataflowRunner",
            "--max_num_workers", "10", "--machine_type", "n2-standard-4", "--gpu", "nvidia-l4"]
    assert launch(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["ee"]["processes"] == 40 and plan["ee"]["max_concurrency_per_process"] == 1
    assert plan["ee"]["requests_per_s_per_process"] == 2.5
    assert plan["ee"]["processes"] * plan["ee"]["max_concurrency_per_process"] <= plan["ee"]["project_max_concurrent"]
    assert plan["tiles"] > 100 and 0 < plan["requests"] <= plan["tiles"] / 10
    assert plan["bytes"] >= plan["tiles"] * 512 * 512 * 8


def test_dry_run_counts_the_requests_the_fetch_sends(fake_ee, tmp_path):
    """The plan's request count equals the computePixels calls of fetching the planned tiles."""
    import earth_engine
    from pipeline.dry_run import plan
    from tiles.planning import expand_shard
    from transforms.plan import expand_and_pack

    _, spec = parse_and_validate(["--bbox", "8.0,47.0,8.2,47.1", *TIME, "--dry-run", "--tile-px", "64"])
    counted = plan(spec)
    from transforms.plan import PlanTiles

    shards = PlanTiles.from_settings(spec.plan, spec.s2).shards
    requests = [r for shard in shards for r in expand_and_pack(shard, spec.plan.windows, spec.s2)]
    assert len(requests) == counted.summary.tile_requests == sum(len(list(expand_shard(s))) for s in shards)
    earth_engine.fetch_tiles(requests, spec.s2, fake_ee.settings)
    assert len(fake_ee.server.calls) == counted.fetch.requests
    assert sum(c.width * c.height * 8 for c in fake_ee.server.calls) == counted.fetch.bytes


def test_json_and_calibrate_need_dry_run(capsys):
    assert launch(["--bbox", "8,47,8.1,47.1", *TIME, "--output", "/tmp/x", "--json"]) == 2
    assert "--json and --calibrate only apply with --dry-run" in capsys.readouterr().err


def test_calibration_fetches_and_embeds_sampled_blocks_against_the_endpoint(fake_ee, recipe_checkpoint_b64,
                                                                            model_cache, capsys):
    from tests.fakes.ee_server import LatencyModel

    fake_ee.server.reset(latency=LatencyModel(base_s=0.05))
    argv = ["--bbox", "8.0,47.0,8.1,47.05", *TIME, "--dry-run", "--json", "--calibrate", "3", "--tile-px", "32",
            "--img-size", "64", "--ee-endpoint", fake_ee.server.url, "--ee-credentials", "anonymous",
            "--ee-project", "test-project", "--checkpoint", str(recipe_checkpoint_b64), "--ee-request-px",
            str(8 * 32 * 32)]
    assert launch(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    calls = fake_ee.server.calls
    c = plan["calibration"]
    assert c["blocks"] == 3 == c["requests"] == len(calls)
    assert 3 <= c["tiles"] <= 3 * 8 and c["bytes"] == sum(call.width * call.height * 8 for call in calls)
    assert c["s_per_request"] >= 0.05 and c["embed_tiles_per_s"] > 0 and c["tiles_per_s"] > 0
    assert plan["latency_measured"] and plan["latency_s"] == c["s_per_request"]
    assert plan["seconds_at_latency"] == pytest.approx(
        max(plan["requests"] / 100, plan["requests"] * c["s_per_request"] / 40), rel=1e-3, abs=0.1)
