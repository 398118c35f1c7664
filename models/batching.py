"""Grouping of a batch into same-shape runs: the model needs one (H, W) per forward pass."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np


def indices_by_shape(arrays: Sequence[Any]) -> List[List[int]]:
    """Positions of `arrays` grouped by array shape, groups in order of first appearance.

    Args:
        arrays: CHW arrays (anything `np.shape` reads), possibly of different sizes.

    Returns:
        One list of indices into `arrays` per distinct shape; each list is in input order.
    """
    groups: Dict[tuple, List[int]] = {}
    for index, array in enumerate(arrays):
        groups.setdefault(np.shape(array), []).append(index)
    return list(groups.values())
