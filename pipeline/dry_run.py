"""`--dry-run`: the plan of a run (tiles, Earth Engine requests as the packer sends them, bytes, time at the
quota), computed on the launcher without touching Earth Engine or the model; `--json` prints it as one
object; `--calibrate N` fetches and embeds N sampled request blocks against the configured endpoint and
replaces the assumed latency by measured figures. Counting iterates plan shards (each expanded and packed
on its own), never a whole tile list, so memory stays bounded."""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Dict, List, Optional

from pipeline.spec import RunSpec

# Assumed computePixels latency for a full request (2048 x 2048 px median composite, ~48 MiB), used for the
# second time estimate when nothing was measured. A conservative assumption (docs/DEPLOY.md uses the same).
TYPICAL_LATENCY_S = 30.0
# On-demand list prices assumed for the cost line (us-central1; USD per hour). Earth Engine EECU-time and
# Dataflow's own charges are not included.
USD_PER_VCPU_HOUR = 0.0486   # n2 vCPU (0.0316) + 4 GB memory per vCPU (4 x 0.0042)
CALIBRATION_BLOCKS_MAX = 64


@dataclasses.dataclass
class Calibration:
    blocks: int
    requests: int
    tiles: int
    bytes: int
    fetch_s: float          # wall time of the fetch of all sampled blocks
    s_per_request: float    # median request latency
    embed_s: float
    embed_tiles_per_s: float

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.fetch_s if self.fetch_s else 0.0

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.fetch_s if self.fetch_s else 0.0


@dataclasses.dataclass
class Plan:
    summary: Any  # tiles.PlanSummary
    fetch: Any    # earth_engine.FetchPlan
    planning_s: float
    runner: str
    calibration: Optional[Calibration] = None

    @property
    def requests(self) -> int:
        """Tile requests (tiles x windows): the number of output rows the run aims for."""
        return self.summary.tile_requests

    def embed_s(self) -> Optional[float]:
        """With calibration: embedding time of the plan for one process at the rate measured here."""
        c = self.calibration
        return self.summary.tile_requests / c.embed_tiles_per_s if c and c.embed_tiles_per_s else None

    def wall_s(self) -> float:
        """Fetch time at the concurrency cap with the (measured or assumed) latency; with calibration, at
        least the embedding time of one process at the measured rate."""
        return max(self.fetch.seconds_at_latency, self.embed_s() or 0.0)

    def cost_usd(self) -> float:
        """CPU cost of the fetching processes (one vCPU each) for the fetch time, at the assumed list price."""
        return self.fetch.budget.processes * self.fetch.seconds_at_latency / 3600 * USD_PER_VCPU_HOUR

    def to_dict(self) -> Dict[str, Any]:
        fetch = self.fetch
        out: Dict[str, Any] = {
            "runner": self.runner,
            "tiles": self.summary.tiles,
            "windows": self.summary.windows,
            "tile_requests": self.summary.tile_requests,
            "requests": fetch.requests,
            "requests_per_tile": round(fetch.requests_per_tile, 5),
            "bytes": fetch.bytes,
            "shards": self.summary.shards,
            "per_zone": {f"EPSG:{k}": v for k, v in sorted(self.summary.per_zone.items())},
            "ee": {"processes": fetch.budget.processes,
                   "max_concurrency_per_process": fetch.budget.max_concurrency_per_process,
                   "requests_per_s_per_process": fetch.budget.requests_per_s_per_process,
                   "project_max_concurrent": fetch.budget.project_max_concurrent,
                   "project_requests_per_s": fetch.budget.project_requests_per_s,
                   "how": fetch.budget.how},
            "seconds_at_quota": round(fetch.seconds_at_quota, 1),
            "latency_s": fetch.latency_s,
            "latency_measured": self.calibration is not None,
            "seconds_at_latency": round(fetch.seconds_at_latency, 1),
            "cost_usd_fetch_cpu": round(self.cost_usd(), 2),
            "embed_s_one_process": None if (embed_s := self.embed_s()) is None else round(embed_s, 1),
            "wall_s": round(self.wall_s(), 1),
            "planning_s": round(self.planning_s, 3),
        }
        if self.calibration is not None:
            c = self.calibration
            out["calibration"] = {**dataclasses.asdict(c), "bytes_per_s": round(c.bytes_per_s, 1),
                                  "tiles_per_s": round(c.tiles_per_s, 3)}
        return out

    def report(self) -> str:
        fetch = self.fetch
        budget = fetch.budget
        hours = fetch.seconds_at_quota / 3600
        lines = ["dry run: nothing was fetched and no model was loaded" if self.calibration is None else
                 f"dry run with calibration: {self.calibration.blocks} sampled request blocks were fetched and "
                 "embedded",
                 self.summary.to_text(),
                 f"Earth Engine: {fetch.requests} computePixels requests ({fetch.requests_per_tile:.4f} per tile), "
                 f"{fetch.bytes / 1e9:.2f} GB to fetch",
                 f"Earth Engine budget: {budget.processes} fetching process(es) x {budget.max_concurrency_per_process} "
                 f"in flight and {budget.requests_per_s_per_process:.3g} requests/s each ({budget.how}; project quota "
                 f"{budget.project_max_concurrent} concurrent, {budget.project_requests_per_s:g}/s)",
                 f"time at the quota: >= {fetch.seconds_at_quota:.0f} s ({hours:.2f} h) at the project's requests/s"]
        if self.calibration is not None:
            c = self.calibration
            lines += [f"measured: {c.s_per_request:.3f} s/request (median of {c.requests}), "
                      f"{c.bytes_per_s / 1e6:.2f} MB/s, "
                      f"{c.tiles_per_s:.1f} tiles/s fetched with {budget.max_concurrency_per_process} in flight; "
                      f"embedding {c.embed_tiles_per_s:.2f} tiles/s on this machine"]
            basis = f"measured {fetch.latency_s:.3f} s/request"
        else:
            basis = f"assuming ~{TYPICAL_LATENCY_S:g} s/request"
        lines.append(f"fetch time at the concurrency cap, {basis}: ~{fetch.seconds_at_latency:.1f} s "
                     f"({fetch.seconds_at_latency / 3600:.2f} h); fetch CPU cost ~${self.cost_usd():.2f} at "
                     f"${USD_PER_VCPU_HOUR}/vCPU-hour (GPU, Earth Engine EECU-time and Dataflow charges not included)")
        if self.embed_s() is not None:
            lines.append(f"embedding at the rate measured here: ~{self.embed_s():.1f} s for one process; wall time "
                         f">= {self.wall_s():.1f} s ({self.wall_s() / 3600:.2f} h) with one embedding process "
                         f"(divide the embedding part by the GPU workers' speed-up)")
        lines.append(f"planned in {self.planning_s:.2f} s")
        return "\n".join(lines)


def _request_counts(spec: RunSpec):
    """(summary, computePixels requests per window, request pixels per window, shards) of the plan."""
    from earth_engine.packing import planned_blocks
    from tiles.planning import expand_shard, summarize_shards
    from transforms.plan import PlanTiles

    shards = PlanTiles.from_settings(spec.plan, spec.s2).shards
    requests = pixels = 0
    for shard in shards:
        blocks = planned_blocks([a.pixel_box for a in expand_shard(shard)], spec.s2)
        requests += len(blocks)
        pixels += sum(w * h for _, _, w, h in blocks)
    return summarize_shards(shards, spec.plan.windows), requests, pixels, shards


def plan(spec: RunSpec, latency_s: Optional[float] = None) -> Plan:
    import earth_engine

    started = time.monotonic()
    summary, requests, pixels, _ = _request_counts(spec)
    windows = summary.windows
    fetch = earth_engine.FetchPlan(summary.tile_requests, requests * windows,
                                   pixels * windows * spec.s2.bytes_per_pixel, spec.ee_budget,
                                   latency_s if latency_s is not None else TYPICAL_LATENCY_S)
    return Plan(summary=summary, fetch=fetch, planning_s=time.monotonic() - started, runner=spec.runner)


def sample_blocks(spec: RunSpec, n: int) -> List[list]:
    """N request blocks of the plan (lists of TileRequests of the first window), spread evenly over it."""
    from tiles.planning import check_windows
    from transforms.plan import PlanTiles, expand_and_pack

    shards = PlanTiles.from_settings(spec.plan, spec.s2).shards
    window = check_windows(spec.plan.windows)[:1]
    blocks: Dict[Optional[str], list] = {}
    for shard in shards:
        for request in expand_and_pack(shard, window, spec.s2):
            blocks.setdefault(request.block, []).append(request)
    keys = list(blocks)
    step = max(1, len(keys) // max(1, n))
    return [blocks[k] for k in keys[::step][:n]]


def calibrate(spec: RunSpec, n: int) -> Calibration:
    """Fetch and embed ``n`` sampled request blocks through the pipeline's own fetcher and model."""
    import statistics

    import numpy as np

    import earth_engine
    import models
    from tiles.records import TilePixels

    blocks = sample_blocks(spec, min(n, CALIBRATION_BLOCKS_MAX))
    requests = [r for block in blocks for r in block]
    earth_engine.initialize(spec.ee)
    metrics = earth_engine.FetchMetrics()
    started = time.monotonic()
    results = earth_engine.Fetcher(spec.s2, metrics).fetch(requests)
    fetch_s = time.monotonic() - started
    counts, latencies_ms = metrics.drain()
    pixels = [r.chw for r in results if isinstance(r, TilePixels)]
    embed_s, embedded = 0.0, 0
    if pixels:
        embedder = models.DynamicVisEmbedder(spec.inference.model)
        embedder.embed(np.stack(pixels[:1]), pooling=spec.inference.pooling, grid=False)  # warm-up: not timed
        started = time.monotonic()
        for start in range(0, len(pixels), spec.inference.max_batch_size):
            batch = pixels[start:start + spec.inference.max_batch_size]
            from models.batching import indices_by_shape

            for indices in indices_by_shape(batch):
                embedder.embed(np.stack([batch[i] for i in indices]), pooling=spec.inference.pooling, grid=False)
        embed_s, embedded = time.monotonic() - started, len(pixels)
    return Calibration(blocks=len(blocks), requests=int(counts.get("requests", 0)), tiles=len(requests),
                       bytes=int(counts.get("bytes", 0)), fetch_s=fetch_s,
                       s_per_request=statistics.median(latencies_ms) / 1000 if latencies_ms else 0.0,
                       embed_s=embed_s, embed_tiles_per_s=embedded / embed_s if embed_s else 0.0)


def main(spec: RunSpec) -> str:
    """What `--dry-run` prints: the text report, or one JSON object with `--json`."""
    calibration = calibrate(spec, spec.out.calibrate) if spec.out.calibrate else None
    result = plan(spec, calibration.s_per_request if calibration and calibration.requests else None)
    result.calibration = calibration
    return json.dumps(result.to_dict(), sort_keys=True) if spec.out.json else result.report()
