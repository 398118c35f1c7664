"""Dry-run estimates: computePixels requests, bytes and seconds of a run, from the packed requests."""
from __future__ import annotations

import dataclasses
from typing import Optional

from earth_engine.quota import EEBudget


@dataclasses.dataclass(frozen=True)
class FetchPlan:
    tiles: int               # tile requests (tiles x windows)
    requests: int            # computePixels requests, as the packer sends them
    bytes: int               # bytes Earth Engine returns
    budget: EEBudget
    latency_s: Optional[float] = None  # seconds per request assumed (or measured) for the second estimate

    @property
    def requests_per_tile(self) -> float:
        return self.requests / self.tiles if self.tiles else 0.0

    @property
    def seconds_at_quota(self) -> float:
        """Lower bound: every fetching process at its requests/s."""
        return self.requests / (self.budget.requests_per_s_per_process * self.budget.processes)

    @property
    def seconds_at_latency(self) -> Optional[float]:
        """With ``latency_s`` per request and every process at its concurrency cap."""
        if self.latency_s is None:
            return None
        slots = self.budget.max_concurrency_per_process * self.budget.processes
        return max(self.seconds_at_quota, self.requests * self.latency_s / slots)

    def describe(self) -> str:
        text = (f"{self.tiles} tiles -> {self.requests} computePixels requests "
                f"({self.requests_per_tile:.3f} per tile), "
                f"{self.bytes / 1e9:.2f} GB, >= {self.seconds_at_quota:.0f} s at the requests/s quota")
        if self.seconds_at_latency is not None:
            text += f", ~{self.seconds_at_latency:.0f} s at the concurrency cap"
        return text
