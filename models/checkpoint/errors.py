"""The checkpoint error every part of loading raises (a ``ValueError``, so callers that catch those still do)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message saying what is wrong and what to do."""

