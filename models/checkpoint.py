"""Checkpoint loading without executing pickled code, with strict key/shape checks and a safetensors cache.

Official DynamicVis files are mmengine training checkpoints whose pickle references numpy reconstructors,
mmengine's HistoryBuffer and ``builtins.getattr``. ``weights_only=True`` refuses them, and allow-listing
``getattr`` would re-open code execution (``getattr(builtins, 'eval')``). So the unpickler here resolves
every global outside a tiny tensor-rebuilding allowlist to an inert placeholder class that runs nothing;
only real tensors are taken from the state dict (a tensor slot holding a placeholder is an error). A pickle
that names globals beyond what weight files use (``INERT_GLOBALS``), or calls an object it built (how
``getattr(x, 'eval')(...)`` would run code), is refused with a ``CheckpointRefusedError`` saying so.

Hugging Face checkpoints are looked up in every hub cache a user may already have (``hf_cache_dirs``)
before anything is downloaded.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from models.backbone import ARCHS, DynamicVisBackbone, canonical_arch
from models.config import DEFAULT_CHECKPOINT, default_cache_dir


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message saying what is wrong and what to do."""


# ----------------------------------------------------------------------------------------------- unpickling
class CheckpointRefusedError(CheckpointError):
    """A checkpoint whose pickle would run code under ``torch.load``; nothing of it was run."""


# Globals that official (mmengine) checkpoints name besides tensors, in their metadata (message hub, numpy
# scalars, config): accepted, but resolved to inert placeholders, never to the real objects. Python 2 names
# (``__builtin__``) are mapped to Python 3 ones first. ``builtins.getattr`` is here because mmengine's
# HistoryBuffer pickles ``getattr(HistoryBuffer, 'min')``; what makes it dangerous, calling its result, is
# caught separately (see ``_Audit``).
INERT_GLOBALS = frozenset({
    "mmengine.logging.history_buffer.HistoryBuffer", "mmengine.config.config.ConfigDict",
    "mmengine.config.config.Config", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.ndarray", "numpy.dtype",
    "_codecs.encode", "builtins.getattr", "builtins.set", "builtins.frozenset", "builtins.slice",
    "collections.defaultdict", "argparse.Namespace",
})


class InertGlobal:
    """Stand-in for any pickled global outside the tensor allowlist: constructing or filling it runs no code."""

    qualified_name = "?"
    audit: "_Audit | None" = None

    def __new__(cls, *args, **kwargs):
        instance = object.__new__(cls)
        instance.origin = f"{cls.qualified_name}({_summarise(args)})"
        return instance

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __call__(self, *args, **kwargs):
        """Only a pickle that runs code calls what a call returned (e.g. ``getattr(x, 'eval')(...)``)."""
        if self.audit is not None:
            self.audit.calls.append(self.origin)
        result = object.__new__(type(self))
        result.origin = f"{self.origin}({_summarise(args)})"
        return result

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


def _summarise(args: tuple) -> str:
    return ", ".join(repr(a)[:40] if isinstance(a, (str, int, float)) else "…" for a in args)


class _Audit:
    """One load: resolves globals (the allowlist's real objects, else inert placeholders) and records what a
    code-running pickle gives away: globals outside both lists, and calls of placeholder instances."""

    def __init__(self) -> None:
        self.foreign: dict[str, None] = {}   # ordered set
        self.calls: list[str] = []
        self._types: dict[str, type] = {}

    def resolve(self, module: str, name: str):
        import _compat_pickle

        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        real = _allowed_global(module, name)
        if real is not None:
            return real
        qualified = f"{module}.{name}"
        if qualified not in INERT_GLOBALS:
            self.foreign[qualified] = None
        if qualified not in self._types:
            self._types[qualified] = type(f"Inert[{qualified}]", (InertGlobal,),
                                          {"qualified_name": qualified, "audit": self})
        return self._types[qualified]

    def refusal(self, path: str | Path) -> CheckpointRefusedError | None:
        if not (self.foreign or self.calls):
            return None
        found = []
        if self.foreign:
            found.append(f"names globals outside the allowlist ({', '.join(self.foreign)})")
        if self.calls:
            found.append(f"calls what {', '.join(dict.fromkeys(self.calls))} returned")
        return CheckpointRefusedError(
            f"refused {path}: its pickle {' and '.join(found)}, so torch.load would have run code; nothing ran "
            f"(those globals became inert placeholders). Use the official checkpoint ({DEFAULT_CHECKPOINT}) or, "
            "if you trust the file's origin, save its state_dict as .safetensors and pass that file")


def _allowed_global(module: str, name: str):
    """The real object for the few globals a tensor state dict needs, else None."""
    import torch._utils as torch_utils

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch_utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch_utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
    }
    if (module, name) in allowed:
        return allowed[(module, name)]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


def _restricted_pickle_module(audit: _Audit) -> types.ModuleType:
    """A "pickle module" for ``torch.load``: torch subclasses its Unpickler (adding storage handling) and,
    for the legacy format, calls its ``load``; every global goes through ``audit``."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            return audit.resolve(module, name)

    module = types.ModuleType("restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    return module


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` of a checkpoint without running pickled code. Unknown globals become inert; a pickle that
    names globals outside the lists above, or calls what it built, is refused (``CheckpointRefusedError``)."""
    audit = _Audit()
    try:
        # weights_only=False is what torch requires with a custom pickle_module; safety comes from that module:
        # torch's wrapper resolves only storage classes itself and sends every other global to our find_class.
        checkpoint = torch.load(path, map_location="cpu", pickle_module=_restricted_pickle_module(audit),
                                weights_only=False)
    except Exception as error:  # zip, pickle and torch errors all mean "not a readable checkpoint"
        refusal = audit.refusal(path)
        if refusal is not None:
            raise refusal from None
        raise CheckpointError(f"could not read {path} as a PyTorch checkpoint ({type(error).__name__}: {error}); "
                              "the file may be truncated (re-download it) or not a .pth checkpoint") from None
    refusal = audit.refusal(path)
    if refusal is not None:
        raise refusal
    return checkpoint


# ------------------------------------------------------------------------------------------ state dict
def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, InertGlobal) else type(value).__name__


def extract_backbone_state_dict(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    """Backbone tensors of an mmengine / ``model`` / bare state dict, ``module.`` and ``backbone.`` stripped."""
    state = checkpoint
    if isinstance(checkpoint, Mapping):
        for container in ("state_dict", "model", "module"):
            if isinstance(checkpoint.get(container), Mapping):
                state = checkpoint[container]
                break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{source} holds no state dict (got {_describe(checkpoint)}); expected an mmengine "
                              "checkpoint with 'state_dict', a dict with 'model', or a bare state dict")
    keys = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        while key.startswith("module."):
            key = key[len("module."):]
        keys[key] = value
    if any(key.startswith("backbone.") for key in keys):
        keys = {key[len("backbone."):]: value for key, value in keys.items() if key.startswith("backbone.")}
    elif not any(key == "pos_embed" or key.startswith("layers.") for key in keys):
        sample = sorted(keys)[:8]
        raise CheckpointError(f"{source} contains no DynamicVis backbone weights (no 'backbone.*', 'layers.*' or "
                              f"'pos_embed' keys; first keys: {sample}); is this a DynamicVis checkpoint?")
    not_tensors = {key: _describe(value) for key, value in keys.items() if not isinstance(value, torch.Tensor)}
    if not_tensors:
        shown = dict(list(not_tensors.items())[:8])
        raise CheckpointError(f"{source}: {len(not_tensors)} backbone entries are not tensors, e.g. {shown}; the "
                              "file does not hold plain weights (corrupted, or it pickles objects in their place)")
    return {key: value.detach().to(torch.float32).contiguous() for key, value in keys.items()}


def expected_shapes(arch: str, img_size: int = 512) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = DynamicVisBackbone(arch=arch, img_size=img_size)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def arch_from_shapes(state: Mapping[str, torch.Tensor]) -> str | None:
    stem = state.get("layers.0.0.projection.weight")
    if stem is None:
        return None
    for name, spec in ARCHS.items():
        if stem.shape[0] == spec.channels[0]:
            return name
    return None


def arch_from_file_name(file_name: str) -> str | None:
    tokens = re.split(r"[_\-.\s/]+", Path(file_name).name.lower())
    if "l" in tokens or "large" in tokens:
        return "l"
    if "b" in tokens or "base" in tokens:
        return "b"
    return None


def infer_arch(file_name: str, state: Mapping[str, torch.Tensor]) -> str:
    """``arch='auto'``: from the file name (``_l_`` / large, ``_b_`` / base), else from the stem's width."""
    arch = arch_from_file_name(file_name) or arch_from_shapes(state)
    if arch is None:
        raise CheckpointError(f"cannot tell the DynamicVis arch of {file_name}: neither its name nor its "
                              "'layers.0.0.projection.weight' says; set arch='b' or 'l'")
    return arch


def check_state_dict(state: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    """Raise unless ``state`` has exactly the backbone's keys and shapes (pos_embed: any square grid)."""
    expected = expected_shapes(arch)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = []
    for key, shape in expected.items():
        if key not in state or tuple(state[key].shape) == shape:
            continue
        got = tuple(state[key].shape)
        if key == "pos_embed" and len(got) == 3 and got[0] == 1 and got[2] == shape[2] \
                and math.isqrt(got[1]) ** 2 == got[1]:
            continue  # another img_size: resized bicubically on load
        mismatched.append(f"{key}: checkpoint {list(got)} vs model {list(shape)}")
    if not (missing or unexpected or mismatched):
        return

    def listing(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" ... (+{len(items) - 10} more)" if len(items) > 10 else "")

    parts = [f"{source} does not match DynamicVis arch {arch!r}:"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {listing(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} mis-shaped keys: {listing(mismatched)}")
    shape_arch = arch_from_shapes(state)
    if shape_arch and shape_arch != arch:
        parts.append(f"its tensors look like arch {shape_arch!r}: set arch={shape_arch!r} (or 'auto')")
    else:
        parts.append("is it a truncated file or a checkpoint of another DynamicVis variant (mamba2, other "
                     "path_type)?")
    raise CheckpointError("; ".join(parts))


# -------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class CheckpointInfo:
    source: str          # as given: hf://..., gs://..., or a path
    repo: str | None     # Hugging Face repo or gs bucket
    file: str            # file name inside the repo / object name / local path
    sha256: str          # of the source file
    arch: str            # 'b' or 'l'


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
           ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HOME", "XDG_CACHE_HOME")}
    dirs = [Path(env[name]) for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE") if env[name]]
    dirs += [Path(env[name]) / "hub" for name in ("HF_HOME", "HUGGINGFACE_HOME") if env[name]]
    dirs += [Path(env[name]) for name in ("HF_HOME", "HUGGINGFACE_HOME") if env[name]]
    dirs.append(Path(env["XDG_CACHE_HOME"] or Path.home() / ".cache") / "huggingface" / "hub")
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
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
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
    from google.cloud import storage

    try:
        blob = storage.Client().bucket(bucket_name).get_blob(name)
    except Exception as error:
        raise CheckpointError(f"could not reach gs://{bucket_name}/{name} ({type(error).__name__}: {error}); "
                              "check credentials and the URI") from None
    if blob is None:
        raise CheckpointError(f"gs://{bucket_name}/{name} does not exist")
    target = cache_dir / "downloads" / "gs" / bucket_name / str(blob.generation) / name
    if not target.is_file():
        with _atomic_output(target) as tmp:
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
    with _atomic_output(memo) as tmp:
        tmp.write_text(digest.hexdigest())
    return digest.hexdigest()


@contextlib.contextmanager
def _atomic_output(target: Path) -> Iterator[Path]:
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


# ------------------------------------------------------------------------------------ converted cache
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
        with _atomic_output(converted) as tmp:
            save_file(state, str(tmp), metadata={"source": local.source, "sha256": sha256,
                                                 "arch": chosen, "keys": json.dumps(len(state))})
    return state, CheckpointInfo(local.source, local.repo, local.file, sha256, chosen)
