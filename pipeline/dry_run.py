"""`--dry-run`: the plan of a run (tiles, Earth Engine requests, bytes, time at the quota), computed on the
launcher without touching Earth Engine or the model. Counting iterates plan shards, never a tile list, so a
continent plans in seconds with bounded memory."""
from __future__ import annotations

import dataclasses
import time

from pipeline.spec import RunSpec

# Assumed computePixels latency for a 4x4 block of 512 px tiles (a ~29 MB median composite), used for the
# second time estimate only. A conservative assumption, not a measurement (docs/DEPLOY.md uses the same).
TYPICAL_LATENCY_S = 30.0


@dataclasses.dataclass
class Plan:
    summary: object  # tiles.PlanSummary
    fetch: object  # earth_engine.FetchPlan
    planning_s: float

    @property
    def requests(self) -> int:
        """Tile requests (tiles x windows): the number of output rows the run aims for."""
        return self.summary.tile_requests

    def report(self) -> str:
        fetch = self.fetch
        hours = fetch.seconds_at_quota / 3600
        lines = [
            "dry run: nothing was fetched and no model was loaded",
            self.summary.to_text(),
            f"Earth Engine: {fetch.requests} computePixels requests ({fetch.super_tile}x{fetch.super_tile} tiles "
            f"each), {fetch.bytes / 1e9:.2f} GB to fetch",
            f"time at the quota: >= {fetch.seconds_at_quota:.0f} s ({hours:.2f} h) at the project's requests/s",
        ]
        if fetch.seconds_at_latency is not None:
            lines.append(f"time at the concurrency cap, assuming ~{TYPICAL_LATENCY_S:g} s/request: "
                         f"~{fetch.seconds_at_latency:.0f} s ({fetch.seconds_at_latency / 3600:.2f} h)")
        lines.append(f"planned in {self.planning_s:.2f} s")
        return "\n".join(lines)


def plan(spec: RunSpec) -> Plan:
    import earth_engine
    from tiles.planning import plan_summary

    started = time.monotonic()
    summary = plan_summary(spec.regions, spec.windows, spec.tile_px, spec.scale_m)
    fetch = earth_engine.plan_requests(summary.tile_requests, spec.tile_px, spec.s2,
                                       workers=spec.s2.expected_workers, latency_s=TYPICAL_LATENCY_S)
    return Plan(summary=summary, fetch=fetch, planning_s=time.monotonic() - started)
