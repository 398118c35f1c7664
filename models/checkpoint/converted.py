"""The converted cache: a checkpoint's checked backbone weights as a backbone-only safetensors file keyed by
the source's sha256, so every later load (and every worker) skips unpickling and checking."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from models.backbone import canonical_arch
from models.checkpoint.errors import CheckpointError
from models.checkpoint.sources import atomic_output, resolve_source
from models.checkpoint.state_dict import check_state_dict, extract_backbone_state_dict, infer_arch
from models.checkpoint.unpickle import safe_torch_load
from models.config import default_cache_dir


@dataclass(frozen=True)
class CheckpointInfo:
    source: str          # as given: hf://..., gs://..., or a path
    repo: str | None     # Hugging Face repo or gs bucket
    file: str            # file name inside the repo / object name / local path
    sha256: str          # of the source file
    arch: str            # 'b' or 'l'


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, memoised in the cache by (real path, size, mtime) so workers hash it once."""
    stat = path.stat()
    marker = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    memo = cache_dir / "sha256" / marker
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    with atomic_output(memo) as tmp:
        tmp.write_text(digest.hexdigest())
    return digest.hexdigest()


def load_backbone_weights(checkpoint: str, arch: str = "auto", cache_dir: Path | None = None
                          ) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Checked backbone weights of a checkpoint, via a backbone-only safetensors cache keyed by sha256."""
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    local = resolve_source(checkpoint, cache_dir)
    sha256 = file_sha256(local.path, cache_dir)
    converted = cache_dir / "converted" / f"{sha256}.safetensors"
    cached = converted.is_file()
    if cached:
        state = load_file(converted)
    else:
        if local.path.suffix == ".safetensors":
            try:
                tensors = load_file(local.path)
            except Exception as error:
                raise CheckpointError(f"could not read {local.source} as safetensors ({error})") from None
            state = extract_backbone_state_dict(tensors, local.source)
        else:
            state = extract_backbone_state_dict(safe_torch_load(local.path), local.source)
    chosen = canonical_arch(arch) if arch != "auto" else infer_arch(local.file, state)
    check_state_dict(state, chosen, local.source)
    if not cached:
        with atomic_output(converted) as tmp:
            save_file(state, str(tmp), metadata={"source": local.source, "sha256": sha256,
                                                 "arch": chosen, "keys": json.dumps(len(state))})
    return state, CheckpointInfo(local.source, local.repo, local.file, sha256, chosen)
