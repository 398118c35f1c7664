"""The card's Python API raises these three, so callers can tell whose fault a failure is.

``SpecError`` (a ``ValueError``): the request itself is wrong or asks for what this package cannot serve.
``ProviderError`` (a ``RuntimeError``): Earth Engine could not deliver the pixels (no scenes, quota, network).
``ModelError`` (a ``RuntimeError``): the model could not be loaded or run (checkpoint, upstream code).
"""
from __future__ import annotations


class DynamicVisError(Exception):
    """Base of the API's errors; the message says what is wrong and what to do."""


class SpecError(DynamicVisError, ValueError):
    """A spatial, temporal, sensor or output spec (or an ``input_chw`` array) that cannot be served."""


class ProviderError(DynamicVisError, RuntimeError):
    """Earth Engine did not deliver pixels for one or more specs."""


class ModelError(DynamicVisError, RuntimeError):
    """The DynamicVis model could not be built, loaded or run."""
