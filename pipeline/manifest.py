"""The run manifest: configuration, versions and (filled in by the pipeline's last step) counts.

Only an allow-list of options goes in, and credential settings are reduced to their kind, so no token,
key or key-file path can end up in `manifest.json`, in Parquet metadata or in logs.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
from typing import Any, Dict, Mapping, Optional

from earth_engine.settings import credential_kind

# Beam options worth recording (everything else, e.g. service account settings, stays out).
_BEAM_OPTIONS = ("runner", "project", "region", "job_name", "direct_num_workers", "direct_running_mode",
                 "machine_type", "num_workers", "max_num_workers", "sdk_container_image", "experiments")
_SECRET_WORDS = ("token", "secret", "password", "credential", "key_file", "private")
_PACKAGES = ("apache-beam", "torch", "earthengine-api", "pyarrow", "numpy", "mmengine", "safetensors")


def versions() -> Dict[str, Optional[str]]:
    from pipeline import __version__

    found: Dict[str, Optional[str]] = {"pipeline": __version__, "python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def scrub(options: Mapping[str, Any]) -> Dict[str, Any]:
    """Drop anything whose name smells of a secret; reduce ee_credentials to its kind."""
    clean = {}
    for name, value in options.items():
        if name == "ee_credentials":
            clean["ee_credentials"] = credential_kind(value)
        elif not any(word in name.lower() for word in _SECRET_WORDS):
            clean[name] = value
    return clean


def run_configuration(our_options: Mapping[str, Any], beam_options: Mapping[str, Any],
                      model_settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON-able configuration recorded in the manifest and in every Parquet shard's metadata."""
    beam = {name: beam_options.get(name) for name in _BEAM_OPTIONS if beam_options.get(name) is not None}
    return {"options": scrub(our_options), "beam": scrub(beam), "model_settings": scrub(model_settings)}


def base_manifest(run_id: str, created_at: dt.datetime, configuration: Mapping[str, Any],
                  planned: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "run_id": run_id,
        "created_at": created_at.isoformat(),
        "command": "python -m pipeline",
        "configuration": dict(configuration),
        "versions": versions(),
        "counts": {f"planned_{name}": value for name, value in planned.items()},
    }
