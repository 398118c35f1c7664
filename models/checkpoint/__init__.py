"""Checkpoint loading without executing pickled code, with strict key/shape checks and a safetensors cache.

One module per job, in the order a load runs them (``load_backbone_weights``):

- ``sources``: where a checkpoint comes from (``hf://`` via every hub cache a user already has, ``gs://``,
  a local path), as a local file;
- ``unpickle``: ``torch.load`` that runs no pickled code, refusing a pickle that would
  (``CheckpointRefusedError``);
- ``state_dict``: the backbone's tensors out of the usual layouts, the arch, and the key/shape check;
- ``converted``: the backbone-only safetensors cache keyed by the source's sha256.

Every name callers used from ``models.checkpoint`` is importable from here.
"""
from models.checkpoint.converted import CheckpointInfo, file_sha256, load_backbone_weights
from models.checkpoint.errors import CheckpointError
from models.checkpoint.sources import (LocalCheckpoint, atomic_output, fetch_gcs, fetch_hf, find_in_hf_caches,
                                       hf_cache_dir, hf_cache_dirs, resolve_source, split_uri)
from models.checkpoint.state_dict import (arch_from_file_name, arch_from_shapes, check_state_dict, expected_shapes,
                                          extract_backbone_state_dict, infer_arch)
from models.checkpoint.unpickle import INERT_GLOBALS, CheckpointRefusedError, InertGlobal, safe_torch_load

__all__ = ["CheckpointError", "CheckpointRefusedError", "CheckpointInfo", "LocalCheckpoint", "load_backbone_weights",
           "safe_torch_load", "INERT_GLOBALS", "InertGlobal", "extract_backbone_state_dict", "expected_shapes",
           "arch_from_shapes", "arch_from_file_name", "infer_arch", "check_state_dict", "hf_cache_dirs",
           "hf_cache_dir", "find_in_hf_caches", "split_uri", "fetch_hf", "fetch_gcs", "resolve_source",
           "file_sha256", "atomic_output"]
