"""Model settings: explicit arguments > ``RS_EMBED_DYNAMICVIS_*`` environment (the adapter card's knobs) > defaults."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from models.booleans import parse_bool

DEFAULT_HF_REPO = "KyanChen/DynamicVis"
DEFAULT_CKPT_FILE = "pretrain_dynamicvis_b_bf16_mamba_best_single-label_f1-score_epoch_170.pth"
DEFAULT_CHECKPOINT = f"hf://{DEFAULT_HF_REPO}/{DEFAULT_CKPT_FILE}"
UPSTREAM_REPO_URL = "https://github.com/KyanChen/DynamicVis.git"
UPSTREAM_COMMIT = "0bfe96f471af4ddf1c41ae596c468ce40502b67a"
ENV_PREFIX = "RS_EMBED_DYNAMICVIS_"

ARCH_CHOICES = ("auto", "b", "base", "l", "large")
PRECISIONS = ("auto", "fp32", "bf16")   # auto: bf16 only where it is faster (models.runtime)
DEVICES = ("auto", "cpu", "cuda")
# Feature-map pooling: the name a caller asks for -> the name recorded in the output (the card's ``pooling``).
POOLINGS = {"mean": "featmap_mean", "max": "featmap_max"}


def _env_bool(name: str, value: str) -> bool:
    try:
        return parse_bool(value, empty=False)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a boolean; use 1/0, true/false, yes/no") from None


def _env_number(kind: type) -> Callable[[str, str], Any]:
    def parse(name: str, value: str):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a valid {kind.__name__}") from None
    return parse


def _env_text(name: str, value: str) -> str:
    return value


# RS_EMBED_DYNAMICVIS_<knob> -> (ModelConfig field, parser(variable name, value)); HF_REPO and CKPT_FILE
# together make ``checkpoint`` (see ModelConfig.from_env).
_ENV_FIELDS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "IMG": ("img_size", _env_number(int)),
    "ARCH": ("arch", lambda name, value: value.lower()),
    "PATH_TYPE": ("path_type", _env_text),
    "SAMPLING_SCALE": ("sampling_scale", _env_number(float)),
    "MAMBA2": ("mamba2", _env_bool),
    "REPO_PATH": ("upstream_repo_path", _env_text),
    "AUTO_DOWNLOAD_REPO": ("upstream_auto_download", _env_bool),
    "REPO_URL": ("upstream_repo_url", _env_text),
    "REPO_CACHE": ("upstream_repo_cache", _env_text),
}


DEFAULT_FETCH_WORKERS = 8  # the adapter's default for RS_EMBED_DYNAMICVIS_FETCH_WORKERS


def fetch_workers(environ: "os._Environ | dict | None" = None) -> int:
    """``RS_EMBED_DYNAMICVIS_FETCH_WORKERS``: concurrent Earth Engine requests of the batch API (default 8).
    Callers cap it at the project's Earth Engine budget (``earth_engine.settings``)."""
    name = ENV_PREFIX + "FETCH_WORKERS"
    value = (os.environ if environ is None else environ).get(name, "").strip()
    if not value:
        return DEFAULT_FETCH_WORKERS
    workers = _env_number(int)(name, value)
    if workers < 1:
        raise ValueError(f"{name}={value!r} must be >= 1 (concurrent Earth Engine requests)")
    return workers


def user_cache_home() -> Path:
    """The user's cache directory, read at call time: ``$XDG_CACHE_HOME``, else ``~/.cache``."""
    return Path(os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache").expanduser()


def cache_root() -> Path:
    """The project's cache root, read at call time: ``DYNAMICVIS_CACHE_DIR``, else ``dynamicvis_s2`` in the
    user's cache (``user_cache_home``). Converted weights, hashes and downloads live in it, the compiled CPU
    scan in its ``scan_cpu/``. Not Hugging Face downloads (the hub's own caches, ``models.checkpoint.sources``)
    nor the opt-in upstream clone (``RS_EMBED_DYNAMICVIS_REPO_CACHE``, the adapter's default)."""
    configured = os.environ.get("DYNAMICVIS_CACHE_DIR", "").strip()
    return Path(configured).expanduser() if configured else user_cache_home() / "dynamicvis_s2"


def default_cache_dir() -> Path:
    """Converted-weights cache: the project's ``cache_root``."""
    return cache_root()


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the backbone and reproduce an embedding run.

    ``checkpoint`` is ``hf://OWNER/REPO/FILE``, a local path or ``gs://BUCKET/OBJECT``. The upstream-code
    mode (``upstream_repo_path`` / ``upstream_auto_download``) is opt-in; auto-clone is off by default.

    Args:
        checkpoint: Official weights: ``hf://OWNER/REPO/FILE`` (default the released DynamicVis-B), a local
            path or ``gs://BUCKET/OBJECT``.
        arch: 'auto' (from the checkpoint), 'b'/'base' or 'l'/'large'.
        img_size: Model input side in pixels, a multiple of 32 (default 512, the official setting).
        path_type: Mamba token path, default 'forward_reverse_mean'.
        sampling_scale: Token-sampling scale, default 0.1.
        mamba2: Mamba2 mixers (not supported; default False).
        scan: Selective-scan backend (``models.scan``), default 'auto' (the fastest correct one here).
        precision: 'auto' (bf16 only where it is faster), 'fp32' or 'bf16'.
        device: 'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'.
        cache_dir: Converted-weights cache; default ``cache_root()``.
        upstream_repo_path: A local DynamicVis checkout whose code builds the model instead of ours.
        upstream_auto_download: Clone the upstream repository (pinned commit) if needed; default False.
        upstream_repo_url: Where that clone comes from.
        upstream_repo_cache: Where that clone goes.

    Raises:
        ValueError: An unknown arch, precision or device, a bad img_size or an empty checkpoint.
    """

    checkpoint: str = DEFAULT_CHECKPOINT
    arch: str = "auto"
    img_size: int = 512
    path_type: str = "forward_reverse_mean"
    sampling_scale: float = 0.1
    mamba2: bool = False
    scan: str = "auto"
    precision: str = "auto"
    device: str = "auto"
    cache_dir: str | None = None
    upstream_repo_path: str | None = None
    upstream_auto_download: bool = False
    upstream_repo_url: str = UPSTREAM_REPO_URL
    upstream_repo_cache: str = field(default_factory=lambda: str(user_cache_home() / "rs_embed" / "dynamicvis"))

    def __post_init__(self) -> None:
        if str(self.arch).lower() not in ARCH_CHOICES:
            raise ValueError(f"arch={self.arch!r}: use one of {ARCH_CHOICES}")
        if not isinstance(self.img_size, int) or self.img_size < 32 or self.img_size % 32:
            raise ValueError(f"img_size={self.img_size!r}: must be a positive multiple of 32 (the backbone "
                             "downsamples by 32); the official setting is 512")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: use one of {PRECISIONS}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: use one of {DEVICES} or 'cuda:N'")
        if not self.checkpoint:
            raise ValueError("checkpoint is empty: give hf://OWNER/REPO/FILE, a local path or gs://BUCKET/OBJECT")

    @property
    def use_upstream_code(self) -> bool:
        return bool(self.upstream_repo_path) or self.upstream_auto_download

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: "os._Environ | dict | None" = None, **overrides) -> "ModelConfig":
        """Defaults, then ``RS_EMBED_DYNAMICVIS_*`` variables, then explicit (non-None) ``overrides``.

        Args:
            environ: The environment to read; default ``os.environ``. Read: HF_REPO and CKPT_FILE (together
                the checkpoint; a CKPT_FILE that is a URL or absolute path is the checkpoint itself), IMG,
                ARCH, PATH_TYPE, SAMPLING_SCALE, MAMBA2, REPO_PATH, AUTO_DOWNLOAD_REPO, REPO_URL, REPO_CACHE.
            **overrides: ModelConfig fields; None values are ignored.

        Returns:
            The ModelConfig.

        Raises:
            TypeError: An override that is not a ModelConfig field.
            ValueError: A variable that does not parse (e.g. a non-boolean MAMBA2) or an invalid setting.
        """
        env = os.environ if environ is None else environ
        values: dict = {}

        def get(name: str):
            value = env.get(ENV_PREFIX + name)
            return None if value is None or value.strip() == "" else value.strip()

        repo, ckpt_file = get("HF_REPO"), get("CKPT_FILE")
        if ckpt_file and ("://" in ckpt_file or os.path.isabs(ckpt_file)):
            values["checkpoint"] = ckpt_file
        elif repo or ckpt_file:
            values["checkpoint"] = f"hf://{repo or DEFAULT_HF_REPO}/{ckpt_file or DEFAULT_CKPT_FILE}"
        for knob, (field_name, parse) in _ENV_FIELDS.items():
            value = get(knob)
            if value is not None:
                values[field_name] = parse(ENV_PREFIX + knob, value)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown ModelConfig fields: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
