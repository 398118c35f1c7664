"""Per-process request limits (a concurrency cap and a requests-per-second token bucket), and the one place
that derives them from the runner and the project's quota (``ee_budget``).

Shared by every fetcher in the process (Beam runs several DoFn threads per worker process), so the
caps hold for the process as a whole.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple


class TokenBucket:
    """Blocks ``acquire`` so that at most ``rate`` requests start per second (bursts up to ``burst``)."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.rate
            time.sleep(wait)


class RequestLimiter:
    """Concurrency cap plus token bucket; use ``with limiter.slot():`` around each request."""

    def __init__(self, max_concurrency: int, requests_per_second: float):
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._bucket = TokenBucket(requests_per_second)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._slots:
            self._bucket.acquire()
            yield


_limiters: Dict[Tuple[int, float], RequestLimiter] = {}
_limiters_lock = threading.Lock()


def process_limiter(max_concurrency: int, requests_per_second: float) -> RequestLimiter:
    """The process-wide limiter for these limits."""
    key = (max_concurrency, float(requests_per_second))
    with _limiters_lock:
        if key not in _limiters:
            _limiters[key] = RequestLimiter(max_concurrency, requests_per_second)
        return _limiters[key]


# ---------------------------------------------------------------------------------------------------------
# The Earth Engine budget of one process, from the runner and its options (the one place that splits the
# project's quota; run_dataflow.sh and the DAG only pass the project's quota).

DATAFLOW_DEFAULT_MACHINE_TYPE = "n1-standard-1"  # Dataflow's default worker for batch jobs
_SHARED_CORE_VCPUS = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2, "f1-micro": 1, "g1-small": 1}
_LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner",
                  "PrismRunner", "InteractiveRunner")


class QuotaError(ValueError):
    """The job's fetching processes cannot share the project's quota as asked; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class EEBudget:
    """Earth Engine limits of each fetching process, and how they were derived."""

    processes: int
    max_concurrency_per_process: int
    requests_per_s_per_process: float
    project_max_concurrent: int
    project_requests_per_s: float
    how: str  # e.g. "DataflowRunner: 10 workers x 4 SDK processes (n2-standard-4)"
    set_max_num_workers: Optional[int] = None  # Dataflow without --max_num_workers: the ceiling to set

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def machine_vcpus(machine_type: str) -> int:
    """vCPUs of a Compute Engine machine type: n2-standard-4 -> 4, n2-custom-8-32768 -> 8, e2-medium -> 2."""
    name = machine_type.rsplit("/", 1)[-1].strip()
    if name in _SHARED_CORE_VCPUS:
        return _SHARED_CORE_VCPUS[name]
    parts = name.split("-")
    if "custom" in parts and parts.index("custom") + 1 < len(parts):
        value = parts[parts.index("custom") + 1]
    else:
        value = parts[-1]
    if not value.isdigit() or int(value) < 1:
        raise QuotaError(f"cannot tell the vCPUs of machine type {machine_type!r} (expected e.g. n2-standard-4 or "
                         f"n2-custom-8-32768); pass --ee-workers with the number of fetching SDK processes")
    return int(value)


def _experiments(options: Mapping[str, Any]) -> List[str]:
    value = options.get("experiments") or []
    return [value] if isinstance(value, str) else list(value)


def fetching_processes(runner: str, options: Mapping[str, Any], cpu_count: Optional[int] = None,
                       project_max_concurrent: int = 40) -> Tuple[int, str, Optional[int]]:
    """(processes that fetch from Earth Engine at once, how that was derived, the --max_num_workers to set
    or None) for a Beam runner and the pipeline's Beam options (``PipelineOptions.get_all_options()``).

    Dataflow without --max_num_workers could autoscale past the quota, so the ceiling is set to the
    workers the quota allows at one request per process."""
    name = runner.rsplit(".", 1)[-1]
    if name in _LOCAL_RUNNERS:
        mode = options.get("direct_running_mode") or "in_memory"
        if mode != "multi_processing":
            return 1, f"{name} ({mode}): 1 process", None
        workers = options.get("direct_num_workers")
        workers = int(workers) if workers is not None else 1
        if workers == 0:  # Beam: 0 = one per core
            workers = cpu_count or os.cpu_count() or 1
        return workers, f"{name} (multi_processing): {workers} processes (--direct_num_workers)", None
    if name == "DataflowRunner":
        workers = options.get("max_num_workers") or options.get("num_workers")
        machine = options.get("machine_type") or options.get("worker_machine_type") or DATAFLOW_DEFAULT_MACHINE_TYPE
        if "no_use_multiple_sdk_containers" in _experiments(options):
            per_worker, why = 1, "1 SDK process (no_use_multiple_sdk_containers)"
        else:
            per_worker = machine_vcpus(machine)
            why = f"{per_worker} SDK processes (one per vCPU of {machine})"
        # With --gpu (a resource hint) the GPU step runs on its own workers; the fetch runs on the
        # --machine_type pool either way, so that pool's size and vCPUs are what counts.
        cap = None
        if not workers:
            workers = cap = max(1, project_max_concurrent // per_worker)
            why += f"; no --max_num_workers: autoscaling capped at {cap} so the quota holds"
        return int(workers) * per_worker, f"DataflowRunner: {int(workers)} workers x {why}", cap
    raise QuotaError(f"runner {runner!r}: cannot tell how many processes fetch from Earth Engine; pass --ee-workers")


def ee_budget(runner: str, options: Mapping[str, Any], project_max_concurrent: int = 40,
              project_requests_per_s: float = 100.0, processes: Optional[int] = None,
              max_concurrency: Optional[int] = None, requests_per_s: Optional[float] = None,
              cpu_count: Optional[int] = None) -> EEBudget:
    """The per-process Earth Engine limits for this runner, so that processes x concurrency never exceeds
    the project's concurrent-request quota and processes x rate never exceeds its requests/s.

    ``processes`` overrides the count derived from the runner (``--ee-workers``); ``max_concurrency`` and
    ``requests_per_s`` override the split (``--ee-max-concurrency`` / ``--ee-requests-per-s``), checked
    against the quota too."""
    if project_max_concurrent < 1 or project_requests_per_s <= 0:
        raise QuotaError("--ee-quota-concurrent must be >= 1 and --ee-quota-rps > 0")
    if processes is not None:
        if processes < 1:
            raise QuotaError(f"--ee-workers must be >= 1, got {processes}")
        how, cap = f"{processes} processes (--ee-workers)", None
    else:
        processes, how, cap = fetching_processes(runner, options, cpu_count, project_max_concurrent)
    if processes > project_max_concurrent:
        raise QuotaError(
            f"{how} = {processes} fetching processes, more than the Earth Engine project's {project_max_concurrent} "
            f"concurrent requests even at one request each: lower --max_num_workers (at most "
            f"{project_max_concurrent} processes), use one SDK process per worker "
            f"(--experiments=no_use_multiple_sdk_containers) or raise --ee-quota-concurrent after Google raises "
            f"the project's quota")
    concurrency = max_concurrency if max_concurrency is not None else project_max_concurrent // processes
    rate = requests_per_s if requests_per_s is not None else project_requests_per_s / processes
    if concurrency < 1 or processes * concurrency > project_max_concurrent:
        raise QuotaError(f"--ee-max-concurrency {concurrency} x {processes} fetching processes exceeds the project's "
                         f"{project_max_concurrent} concurrent requests ({how}); use at most "
                         f"{project_max_concurrent // processes}")
    if rate <= 0 or processes * rate > project_requests_per_s * (1 + 1e-9):
        raise QuotaError(f"--ee-requests-per-s {rate:g} x {processes} fetching processes exceeds the project's "
                         f"{project_requests_per_s:g} requests/s ({how}); use at most "
                         f"{project_requests_per_s / processes:.3g}")
    return EEBudget(processes, int(concurrency), float(rate), int(project_max_concurrent),
                    float(project_requests_per_s), how, cap)
