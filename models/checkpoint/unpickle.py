"""``torch.load`` without executing pickled code.

Official DynamicVis files are mmengine training checkpoints whose pickle references numpy reconstructors,
mmengine's HistoryBuffer and ``builtins.getattr``. ``weights_only=True`` refuses them, and allow-listing
``getattr`` would re-open code execution (``getattr(builtins, 'eval')``). So the unpickler here resolves
every global outside a tiny tensor-rebuilding allowlist to an inert placeholder class that runs nothing;
only real tensors are taken from the state dict (a tensor slot holding a placeholder is an error). A pickle
that names globals beyond what weight files use (``INERT_GLOBALS``), or calls an object it built (how
``getattr(x, 'eval')(...)`` would run code), is refused with a ``CheckpointRefusedError`` saying so.
"""
from __future__ import annotations

import collections
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from models.checkpoint.errors import CheckpointError
from models.config import DEFAULT_CHECKPOINT


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
    vars(module).update(Unpickler=RestrictedUnpickler,
                        load=lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load())
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

