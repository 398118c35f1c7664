"""Settings of the Sentinel-2 image and of the Earth Engine connection, with documented limits."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

# Earth Engine's documented limits (https://developers.google.com/earth-engine/guides/usage).
PROJECT_MAX_CONCURRENT_REQUESTS = 40
PROJECT_MAX_REQUESTS_PER_SECOND = 100
# computePixels payload limit, counted as sum over bands of (bytes per value + 1 mask byte) x pixels: the rule
# Earth Engine's rejections follow ("Total request size (N bytes) must be less than or equal to 50331648").
COMPUTE_PIXELS_MAX_BYTES = 48 * 1024 * 1024
COMPUTE_PIXELS_MAX_SIDE_PX = 32768             # widest / tallest grid one request may ask for

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
SCENE_COUNT_BAND = "SCENE_COUNT"  # extra uint16 band: unmasked scenes per pixel (0 = no data)
BAND_BYTES = 2  # every band fetched is uint16
COMPOSITES = ("median", "mosaic")
CLOUD_MASKS = (None, "cloud_score_plus", "scl")


@dataclasses.dataclass(frozen=True)
class S2Settings:
    """What to fetch (the card's SensorSpec defaults) and how hard to push Earth Engine.

    ``max_concurrency`` / ``requests_per_second`` default to the project limits divided by
    ``expected_workers`` (the number of worker processes sharing the project's quota).
    """

    collection: str = "COPERNICUS/S2_SR_HARMONIZED"
    bands: Tuple[str, ...] = ("B4", "B3", "B2")
    cloudy_pct: float = 30
    composite: str = "median"
    cloud_mask: Optional[str] = None
    cloud_score_threshold: float = 0.6     # Cloud Score+ cs_cdf >= threshold is clear
    min_valid_fraction: float = 0.0        # tiles with fewer valid pixels are dead-lettered
    request_px: Optional[int] = None       # pixel target per request (latency); None: as many as EE allows
    expected_workers: int = 1
    max_concurrency: Optional[int] = None
    requests_per_second: Optional[float] = None
    max_attempts: int = 5                  # per request, first try included
    backoff_base_s: float = 1.0
    backoff_max_s: float = 32.0

    def __post_init__(self) -> None:
        problems = []
        if self.composite not in COMPOSITES:
            problems.append(f"composite must be one of {COMPOSITES}, got {self.composite!r}")
        if self.cloud_mask not in CLOUD_MASKS:
            problems.append(f"cloud_mask must be one of {CLOUD_MASKS}, got {self.cloud_mask!r}")
        if not self.bands or SCENE_COUNT_BAND in self.bands:
            problems.append(f"bands must be non-empty and not contain {SCENE_COUNT_BAND}: {self.bands}")
        if not 0 <= self.cloudy_pct <= 100:
            problems.append(f"cloudy_pct must be in [0, 100], got {self.cloudy_pct}")
        if not 0 <= self.min_valid_fraction <= 1:
            problems.append(f"min_valid_fraction must be in [0, 1], got {self.min_valid_fraction}")
        if self.request_px is not None and self.request_px < 1:
            problems.append(f"request_px must be >= 1 pixel, got {self.request_px}")
        if self.expected_workers < 1 or self.max_attempts < 1:
            problems.append("expected_workers and max_attempts must be >= 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            problems.append(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            problems.append(f"requests_per_second must be > 0, got {self.requests_per_second}")
        if problems:
            raise ValueError("invalid Sentinel-2 settings: " + "; ".join(problems))

    @property
    def concurrency(self) -> int:
        if self.max_concurrency is not None:
            return self.max_concurrency
        return max(1, PROJECT_MAX_CONCURRENT_REQUESTS // self.expected_workers)

    @property
    def rate(self) -> float:
        if self.requests_per_second is not None:
            return self.requests_per_second
        return PROJECT_MAX_REQUESTS_PER_SECOND / self.expected_workers

    @property
    def band_ids(self) -> Tuple[str, ...]:
        """Bands asked of computePixels: the image bands, then the scene count."""
        return tuple(self.bands) + (SCENE_COUNT_BAND,)

    @property
    def bytes_per_pixel(self) -> int:
        """Bytes per pixel of the returned array: uint16 bands plus the uint16 scene count."""
        return BAND_BYTES * len(self.band_ids)

    @property
    def ee_bytes_per_pixel(self) -> int:
        """Bytes per pixel as Earth Engine counts them against its 48 MiB limit: one mask byte per band on top."""
        return (BAND_BYTES + 1) * len(self.band_ids)


@dataclasses.dataclass(frozen=True)
class EESettings:
    """How to reach Earth Engine.

    credentials: ``'adc'`` (Application Default Credentials, the worker's service account on Dataflow),
    a path to a service-account key JSON, or ``'anonymous'`` (only for a local endpoint, as in tests).
    """

    project: Optional[str] = None
    endpoint: str = HIGH_VOLUME_URL
    credentials: str = "adc"
    deadline_s: float = 180.0  # per-request timeout; a stalled request becomes a retryable timeout

    def __post_init__(self) -> None:
        if credential_source(self.credentials) == ANONYMOUS and not self.project:
            raise ValueError("--ee-credentials anonymous needs an explicit EE project (--ee-project)")
        if self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")


ADC, ANONYMOUS, KEY_FILE = "adc", "anonymous", "service-account-file"


def credential_source(credentials: Optional[str]) -> str:
    """The one reading of ``--ee-credentials``: ``ADC`` | ``ANONYMOUS`` | ``KEY_FILE``.

    Unset or empty is the flag's default, Application Default Credentials; ``'adc'`` and ``'anonymous'`` are
    the two keywords the docs name; anything else is a service-account key file path. ``'default'`` is no
    keyword: like any other word it is read as a key file path (and refused at launch when no such file exists).
    """
    if credentials in (None, "", ADC):
        return ADC
    if credentials == ANONYMOUS:
        return ANONYMOUS
    return KEY_FILE


def credential_kind(credentials: Optional[str]) -> str:
    """'adc' | 'anonymous' | 'service-account-file': what logs and manifests may say, never the key's path."""
    return credential_source(credentials)
