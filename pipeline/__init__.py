"""DynamicVis embeddings of Sentinel-2 RGB: the Beam pipeline (`python -m pipeline`) and the card's Python API.

The API names are imported lazily so that `import pipeline` (e.g. by Beam workers unpickling options)
stays light.
"""
__version__ = "0.1.0"

_API = ("get_embedding", "get_embeddings_batch", "PointBuffer", "BBox", "TemporalSpec", "OutputSpec", "SensorSpec",
        "Embedding")
_ERRORS = ("SpecError", "ProviderError", "ModelError")

__all__ = ["__version__", *_API, *_ERRORS, "read_embeddings"]


def __getattr__(name):
    if name in _API:
        from pipeline import api
        return getattr(api, name)
    if name in _ERRORS:
        from pipeline import errors
        return getattr(errors, name)
    if name == "read_embeddings":
        from pipeline.read import read_embeddings
        return read_embeddings
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
