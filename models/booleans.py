"""The one reading of a yes/no setting, shared by flags (`pipeline.options`) and environment variables."""
from __future__ import annotations

from typing import Optional

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(value: object, empty: Optional[bool] = None) -> bool:
    """Read a boolean setting, case and surrounding blanks ignored.

    Args:
        value: the raw text, e.g. ``"Yes"``, ``" off "``, ``"1"``.
        empty: what an empty value means; ``None``: an empty value is an error.

    Returns:
        True for 1/true/yes/on, False for 0/false/no/off.

    Raises:
        ValueError: for any other value.
    """
    lowered = str(value).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    if not lowered and empty is not None:
        return empty
    raise ValueError(f"{value!r} is not a boolean; use 1/0, true/false, yes/no or on/off")
