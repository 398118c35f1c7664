"""Where a checkpoint comes from: ``hf://OWNER/REPO/FILE`` (looked up in every hub cache a user may already
have, ``hf_cache_dirs``, before anything is downloaded), ``gs://BUCKET/OBJECT`` (downloaded once per object
generation) or a local path; each becomes a local file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from models.booleans import TRUE_WORDS
from models.checkpoint.errors import CheckpointError
from models.config import user_cache_home


@dataclass(frozen=True)
class LocalCheckpoint:
    path: Path
    source: str
    repo: str | None
    file: str


def hf_cache_dirs() -> list[Path]:
    """Hub caches to look in, from the environment at call time, first = where a download goes.

    ``HF_HUB_CACHE`` / ``HUGGINGFACE_HUB_CACHE``, then ``$HF_HOME/hub`` and ``$HUGGINGFACE_HOME/hub`` (the hub's
    own layout), then ``$HF_HOME`` and ``$HUGGINGFACE_HOME`` themselves (the rs-embed adapter passed them as the
    ``cache_dir``, so its downloads sit there), then the hub's default ``$XDG_CACHE_HOME/huggingface/hub``.
    """
    env = {name: os.environ.get(name, "").strip() for name in
           ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HOME")}
    dirs = [Path(env[name]) for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE") if env[name]]
    dirs += [Path(env[name]) / "hub" for name in ("HF_HOME", "HUGGINGFACE_HOME") if env[name]]
    dirs += [Path(env[name]) for name in ("HF_HOME", "HUGGINGFACE_HOME") if env[name]]
    dirs.append(user_cache_home() / "huggingface" / "hub")
    return list(dict.fromkeys(path.expanduser() for path in dirs))


def hf_cache_dir() -> str:
    """Where a Hugging Face download goes (the first of ``hf_cache_dirs``)."""
    return str(hf_cache_dirs()[0])


def find_in_hf_caches(repo: str, file: str) -> Path | None:
    """The cached file of ``repo`` (revision ``main``) in any of ``hf_cache_dirs``, without network."""
    from huggingface_hub import try_to_load_from_cache

    for cache in hf_cache_dirs():
        try:
            found = try_to_load_from_cache(repo_id=repo, filename=file, cache_dir=str(cache))
        except ValueError:  # a repo id the hub refuses: hf_hub_download will say so
            return None
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _hf_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in TRUE_WORDS
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def split_uri(uri: str, scheme: str) -> tuple[str, str]:
    rest = uri[len(scheme):]
    if scheme == "hf://":
        parts = rest.split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise CheckpointError(f"{uri!r}: Hugging Face checkpoints are written hf://OWNER/REPO/FILE")
        return f"{parts[0]}/{parts[1]}", parts[2]
    bucket, _, name = rest.partition("/")
    if not bucket or not name:
        raise CheckpointError(f"{uri!r}: GCS checkpoints are written gs://BUCKET/OBJECT")
    return bucket, name


def fetch_hf(repo: str, file: str) -> Path:
    """A Hugging Face checkpoint: from any cache users already have (see ``hf_cache_dirs``), else downloaded."""
    cached = find_in_hf_caches(repo, file)
    if cached is not None:
        return cached
    from huggingface_hub import hf_hub_download

    offline = _hf_offline()
    try:
        return Path(hf_hub_download(repo_id=repo, filename=file, cache_dir=hf_cache_dir(), local_files_only=offline))
    except Exception as error:
        searched = ", ".join(str(path) for path in hf_cache_dirs())
        hint = (f"offline mode (HF_HUB_OFFLINE) is on and the file is in none of the hub caches ({searched}): "
                "download it once online or point HF_HOME or HF_HUB_CACHE at a cache that has it"
                if offline else "check the repo/file names, network access and HF_TOKEN")
        raise CheckpointError(f"could not get {file!r} from Hugging Face repo {repo!r} "
                              f"({type(error).__name__}: {error}); {hint}") from None


def fetch_gcs(bucket_name: str, name: str, cache_dir: Path) -> Path:
    """Download via google-cloud-storage (honours STORAGE_EMULATOR_HOST); cached per object generation."""
    from google.cloud import storage  # type: ignore[attr-defined]  # google-cloud-storage ships no types

    try:
        blob = storage.Client().bucket(bucket_name).get_blob(name)
    except Exception as error:
        raise CheckpointError(f"could not reach gs://{bucket_name}/{name} ({type(error).__name__}: {error}); "
                              "check credentials and the URI") from None
    if blob is None:
        raise CheckpointError(f"gs://{bucket_name}/{name} does not exist")
    target = cache_dir / "downloads" / "gs" / bucket_name / str(blob.generation) / name
    if not target.is_file():
        with atomic_output(target) as tmp:
            blob.download_to_filename(str(tmp))
    return target


def resolve_source(checkpoint: str, cache_dir: Path) -> LocalCheckpoint:
    """Local file for an hf://, gs:// or filesystem checkpoint reference."""
    if checkpoint.startswith("hf://"):
        repo, file = split_uri(checkpoint, "hf://")
        return LocalCheckpoint(fetch_hf(repo, file), checkpoint, repo, file)
    if checkpoint.startswith("gs://"):
        bucket, name = split_uri(checkpoint, "gs://")
        return LocalCheckpoint(fetch_gcs(bucket, name, cache_dir), checkpoint, bucket, name)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path} (use hf://OWNER/REPO/FILE for Hugging Face or "
                              "gs://BUCKET/OBJECT for Cloud Storage)")
    return LocalCheckpoint(path, checkpoint, None, str(path))


@contextlib.contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target`` that replaces it when the block succeeds (concurrent workers
    never see a partial file) and is removed when it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
