"""Packing tiles and chips into computePixels requests by Earth Engine's own size rule.

Earth Engine refuses a computePixels request whose grid is wider or taller than 32,768 px, or whose
payload exceeds 48 MiB counted as sum over bands of (bytes per value + 1 mask byte) x pixels. Within that
budget (and an optional pixel target per request, for latency) the tiles or chips of one zone, pixel
size and time window are grouped into rectangles of any alignment: a greedy cover that starts at the
northernmost-westernmost box left and slides a budget-sized window east/west to take the most area.
Holes are allowed (a request may include ground no tile asked for). A box bigger than one request is
split into pieces that are fetched separately and stitched pixel for pixel.

Boxes are ``(x0, y0, width, height)`` on the zone's pixel lattice (``tiles.records.Chip``), rows counted
north; a block's array has its first row at the north edge.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from earth_engine.settings import COMPUTE_PIXELS_MAX_BYTES, COMPUTE_PIXELS_MAX_SIDE_PX, S2Settings
from tiles.records import TileRequest, TimeWindow

Box = Tuple[int, int, int, int]  # x0, y0, width, height in pixels of the lattice
FALLBACK_CELL_PX = 8192  # requests the planner did not pack are grouped by lattice cells of this size
MIN_FILL = 0.25  # a request's boxes cover at least this share of its pixels: scattered chips are not merged
                # into mostly-empty rectangles, which would cost Earth Engine compute and latency for nothing


def max_request_pixels(s2: S2Settings) -> int:
    """Pixels one request may hold: EE's byte rule, lowered to ``s2.request_px`` when set."""
    by_bytes = COMPUTE_PIXELS_MAX_BYTES // s2.ee_bytes_per_pixel
    return min(by_bytes, s2.request_px) if s2.request_px else by_bytes


def request_bytes(width: int, height: int, s2: S2Settings) -> int:
    """The size Earth Engine counts for a request of this grid (data plus one mask byte per band)."""
    return width * height * s2.ee_bytes_per_pixel


def window_shape(width: int, height: int, max_px: int, max_side: int = COMPUTE_PIXELS_MAX_SIDE_PX) -> Tuple[int, int]:
    """(W, H) of the packing window for boxes of this size: whole boxes, as square as the budget allows,
    then as wide as it allows."""
    rows = max(1, min(math.isqrt(max_px) // height, max_side // height))
    cols = max(1, min(max_px // (rows * height * width), max_side // width))
    return cols * width, rows * height


def fits(box: Box, max_px: int, max_side: int = COMPUTE_PIXELS_MAX_SIDE_PX) -> bool:
    _, _, w, h = box
    return w * h <= max_px and w <= max_side and h <= max_side


def pieces(box: Box, max_px: int, max_side: int = COMPUTE_PIXELS_MAX_SIDE_PX) -> List[Box]:
    """An oversize box cut into pieces that each fit one request (full-width strips where possible)."""
    x0, y0, w, h = box
    pw = min(w, max_side, max(1, max_px))
    ph = max(1, min(h, max_side, max_px // pw))
    out = []
    top = y0 + h
    while top > y0:
        bottom = max(y0, top - ph)
        out += [(x, bottom, min(pw, x0 + w - x), top - bottom) for x in range(x0, x0 + w, pw)]
        top = bottom
    return out


def window_shapes(width: int, height: int, max_px: int,
                  max_side: int = COMPUTE_PIXELS_MAX_SIDE_PX) -> List[Tuple[int, int]]:
    """Candidate (W, H) packing windows for boxes of this size: the squarest (``window_shape``) and the
    other maximal whole-box shapes up to an aspect ratio of 4, squarest first."""
    square = window_shape(width, height, max_px, max_side)
    out = [square]
    n = square[1] // height
    for rows in sorted({max(1, n // 4), max(1, n // 2), 2 * n, 4 * n} - {n}):
        if rows * height > max_side:
            continue
        cols = min(max_px // (rows * height * width), max_side // width)
        if cols >= 1 and (cols * width, rows * height) not in out:
            out.append((cols * width, rows * height))
    return out


def _best_window(x0, y0, w, h, top, alive, anchor: int, win_w: int, win_h: int) -> Tuple[float, np.ndarray]:
    """(area covered, indices) of the best placement of a win_w x win_h window whose top is the anchor's
    top and which holds the anchor."""
    win_top = int(top[anchor])
    lo = x0 + w - win_w  # window left edges that hold box i: [lo_i, x0_i]
    a_lo, a_hi = int(lo[anchor]), int(x0[anchor])
    cand = np.flatnonzero(alive & (top <= win_top) & (y0 >= win_top - win_h) & (w <= win_w)
                          & (x0 >= a_lo) & (lo <= a_hi))
    c_lo, c_hi = np.maximum(lo[cand], a_lo), np.minimum(x0[cand], a_hi)
    area = (w[cand] * h[cand]).astype(np.float64)
    # Best left edge: the area-weighted depth of the interval stack is maximal at some interval start.
    start_area = np.concatenate([[0.0], np.cumsum(area[np.argsort(c_lo, kind="stable")])])
    end_area = np.concatenate([[0.0], np.cumsum(area[np.argsort(c_hi, kind="stable")])])
    probes = np.unique(c_lo)
    depth = (start_area[np.searchsorted(np.sort(c_lo), probes, side="right")]
             - end_area[np.searchsorted(np.sort(c_hi), probes, side="left")])
    k = int(np.argmax(depth))
    best = int(probes[k])
    chosen = cand[(c_lo <= best) & (c_hi >= best)]
    return _filled(x0, y0, w, h, anchor, chosen)


def _filled(x0, y0, w, h, anchor: int, chosen: np.ndarray) -> Tuple[float, np.ndarray]:
    """(area, members): the nearest boxes to the anchor whose bounding box is at least MIN_FILL covered."""
    dist = np.maximum(np.abs(x0[chosen] - x0[anchor]), np.abs(y0[chosen] + h[chosen] - y0[anchor] - h[anchor]))
    chosen = chosen[np.argsort(dist, kind="stable")]
    left = np.minimum.accumulate(x0[chosen])
    bottom = np.minimum.accumulate(y0[chosen])
    right = np.maximum.accumulate(x0[chosen] + w[chosen])
    top = np.maximum.accumulate(y0[chosen] + h[chosen])
    area = np.cumsum((w[chosen] * h[chosen]).astype(np.float64))
    fill = area / ((right - left) * (top - bottom))
    k = int(np.flatnonzero(fill >= MIN_FILL - 1e-12).max()) + 1  # the anchor alone fills its box
    return float(area[k - 1]), chosen[:k]


def pack_boxes(boxes: Sequence[Box], max_px: int, max_side: int = COMPUTE_PIXELS_MAX_SIDE_PX) -> List[List[int]]:
    """Indices of ``boxes`` grouped into requests; every group's bounding box fits the budget.

    Greedy: the northernmost-westernmost box left anchors the next request; of the candidate window
    shapes and horizontal positions that hold it, the one covering the most box area wins. Boxes must
    each fit (see ``pieces``). Deterministic: the same boxes give the same groups.
    """
    if not boxes:
        return []
    arr = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    x0, y0, w, h = arr.T
    top = y0 + h
    order = np.lexsort((x0, -top))  # north first, then west
    alive = np.ones(len(arr), dtype=bool)
    groups: List[List[int]] = []
    for anchor in order:
        if not alive[anchor]:
            continue
        best_area, chosen = -1.0, np.array([anchor])
        for win_w, win_h in window_shapes(int(w[anchor]), int(h[anchor]), max_px, max_side):
            area, members = _best_window(x0, y0, w, h, top, alive, anchor, win_w, win_h)
            if area > best_area:
                best_area, chosen = area, members
        alive[chosen] = False
        groups.append(sorted(int(i) for i in chosen))
    return groups


def bounding_box(boxes: Iterable[Box]) -> Box:
    boxes = list(boxes)
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def intersection(a: Box, b: Box) -> Optional[Box]:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def array_window(outer: Box, inner: Box) -> Tuple[slice, slice]:
    """(rows, cols) of ``inner`` inside the north-up array of ``outer``."""
    rows = slice(outer[1] + outer[3] - (inner[1] + inner[3]), outer[1] + outer[3] - inner[1])
    cols = slice(inner[0] - outer[0], inner[0] - outer[0] + inner[2])
    return rows, cols


@dataclasses.dataclass
class Block:
    """One computePixels call: a lattice rectangle of one zone, pixel size and window, and the requests
    whose boxes it holds (whole, or one piece of an oversize box)."""

    epsg: int
    scale_m: float
    window: TimeWindow
    box: Box
    requests: List[TileRequest]

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def width(self) -> int:
        return self.box[2]

    @property
    def height(self) -> int:
        return self.box[3]

    @property
    def n_boxes(self) -> int:
        """Distinct tile/chip boxes (several user requests may ask for the same one)."""
        return len({r.tile.pixel_box for r in self.requests})

    @property
    def n_tiles(self) -> int:
        return self.n_boxes

    @property
    def is_piece(self) -> bool:
        """Part of one oversize box (not the whole box)."""
        return self.n_boxes == 1 and self.requests[0].tile.pixel_box != self.box

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        x0, y0, w, h = self.box
        s = self.scale_m
        return x0 * s, y0 * s, (x0 + w) * s, (y0 + h) * s

    def grid(self) -> dict:
        """The computePixels ``grid``: the zone's own UTM pixel lattice, north up."""
        x0, y0, w, h = self.box
        return {
            "dimensions": {"width": w, "height": h},
            "affineTransform": {"scaleX": self.scale_m, "shearX": 0, "translateX": x0 * self.scale_m,
                                "shearY": 0, "scaleY": -self.scale_m, "translateY": (y0 + h) * self.scale_m},
            "crsCode": self.crs,
        }

    def singles(self, s2: S2Settings) -> List["Block"]:
        """One block per distinct box (pieces for oversize ones), for the fallback after a failed block."""
        by_box: Dict[Box, List[TileRequest]] = OrderedDict()
        for r in self.requests:
            by_box.setdefault(r.tile.pixel_box, []).append(r)
        return [b for box, rs in by_box.items() for b in _box_blocks(self.epsg, self.scale_m, self.window, box, rs,
                                                                      max_request_pixels(s2))]


def _box_blocks(epsg: int, scale_m: float, window: TimeWindow, box: Box, requests: List[TileRequest],
                max_px: int) -> List[Block]:
    if fits(box, max_px):
        return [Block(epsg, scale_m, window, box, requests)]
    return [Block(epsg, scale_m, window, piece, requests) for piece in pieces(box, max_px)]


def _group(request: TileRequest) -> Tuple[int, float, TimeWindow, Any]:
    t = request.tile
    return t.epsg, float(t.scale_m), request.window, request.block


def pack(requests: Iterable[TileRequest], s2: S2Settings) -> List[Block]:
    """The requests as computePixels blocks: per (zone, pixel size, window, planner block), boxes packed
    by ``pack_boxes`` and oversize boxes cut into pieces. Deterministic; first appearance first."""
    max_px = max_request_pixels(s2)
    groups: Dict[Tuple[int, float, TimeWindow, Any], Dict[Box, List[TileRequest]]] = OrderedDict()
    for r in requests:
        groups.setdefault(_group(r), OrderedDict()).setdefault(r.tile.pixel_box, []).append(r)
    blocks: List[Block] = []
    for (epsg, scale_m, window, _), by_box in groups.items():
        small = [box for box in by_box if fits(box, max_px)]
        for box in by_box:
            if not fits(box, max_px):
                blocks += _box_blocks(epsg, scale_m, window, box, by_box[box], max_px)
        for indices in pack_boxes(small, max_px):
            members = [small[i] for i in indices]
            blocks.append(Block(epsg, scale_m, window, bounding_box(members),
                                [r for box in members for r in by_box[box]]))
    return blocks


def planned_blocks(boxes: Sequence[Box], s2: S2Settings) -> List[Box]:
    """The request rectangles ``pack`` sends for these distinct boxes of one zone and window."""
    max_px = max_request_pixels(s2)
    boxes = list(dict.fromkeys(boxes))
    small = [b for b in boxes if fits(b, max_px)]
    out = [piece for b in boxes if not fits(b, max_px) for piece in pieces(b, max_px)]
    return out + [bounding_box(small[i] for i in group) for group in pack_boxes(small, max_px)]


def count_requests(boxes: Sequence[Box], s2: S2Settings) -> int:
    """computePixels requests for these boxes of one zone and window (what ``pack`` would send)."""
    return len(planned_blocks(boxes, s2))


def group_key(request: TileRequest) -> str:
    """The key FetchTiles groups requests by: the planner's block, else a coarse lattice cell."""
    t = request.tile
    x0, y0, _, _ = t.pixel_box
    where = request.block or f"cell{x0 // FALLBACK_CELL_PX}_{y0 // FALLBACK_CELL_PX}"
    return f"{t.epsg}/{t.scale_m!r}m/{request.window.key}/{where}"
