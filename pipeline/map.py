"""`python -m pipeline.map`: a run's embeddings as a picture: PCA of the embeddings -> RGB, drawn where the tiles are.

The PCA basis is fitted once on a bounded, uniform sample of the run's pooled embeddings (all windows), saved
as `map-basis.json` beside the shards and reused by later calls, so every window, and any run given the same
`--basis`, is coloured alike (per-image PCA colours are not comparable across images). Each tile is one
pixel of its UTM zone's tile grid, or, for runs written with `--grid`, its last-stage feature cells
(16 x 16 at 512 px) at their own ground positions. Outputs: a PNG quick-look with a scale bar and the run's
extent, and a georeferenced cloud-optimised GeoTIFF (RGBA) per UTM zone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipeline import sample as sample_lib
from pipeline.sample import Window
from tiles.errors import InputError

BASIS_FILE = "map-basis.json"
SAMPLE_SIZE = 20_000
PERCENTILES = (1.0, 99.0)  # colour range of each component over the sample: robust to outliers
PNG_MIN_PX, PNG_MAX_PX = 512, 2048  # small runs are enlarged (whole pixels), large ones shrunk
CELL_BATCH_ROWS = 32  # a --grid row holds D*16*16 floats (~0.8 MB at D=768)


# --------------------------------------------------------------------------------------------------
# The colour basis
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Basis:
    """Mean, first three principal axes and their colour range: embedding -> RGB."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (3, D), unit rows; each one's largest-magnitude loading is positive
    lo: np.ndarray  # (3,) component values drawn as 0
    hi: np.ndarray  # (3,) component values drawn as 255
    n_sample: int
    n_rows: int

    @property
    def dim(self) -> int:
        return int(self.mean.size)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, np.float64) - self.mean) @ self.components.T

    def rgb(self, vectors: np.ndarray) -> np.ndarray:
        """Colour embeddings.

        Args:
            vectors: Embeddings (..., D).

        Returns:
            (..., 3) uint8 RGB: components 1-3 scaled from [lo, hi] to 0..255, clipped.

        Raises:
            InputError: D differs from the basis's.
        """
        vectors = np.asarray(vectors)
        if vectors.shape[-1] != self.dim:
            raise InputError(f"embeddings have length {vectors.shape[-1]} but the colour basis was fitted on "
                             f"length {self.dim}; pass --refit (or another --basis) for this run")
        span = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        unit = np.clip((self.scores(vectors.reshape(-1, self.dim)) - self.lo) / span, 0.0, 1.0)
        return np.rint(unit * 255).astype(np.uint8).reshape(*vectors.shape[:-1], 3)

    def to_json(self) -> dict:
        return {"kind": "dynamicvis-pca-rgb", "version": 1, "dim": self.dim, "n_sample": self.n_sample,
                "n_rows": self.n_rows, "percentiles": list(PERCENTILES), "mean": self.mean.tolist(),
                "components": self.components.tolist(), "lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "Basis":
        if data.get("kind") != "dynamicvis-pca-rgb":
            raise InputError("not a colour basis written by pipeline.map")
        return cls(mean=np.asarray(data["mean"], np.float64), components=np.asarray(data["components"], np.float64),
                   lo=np.asarray(data["lo"], np.float64), hi=np.asarray(data["hi"], np.float64),
                   n_sample=int(data["n_sample"]), n_rows=int(data["n_rows"]))


def fit_basis(vectors: np.ndarray, n_rows: Optional[int] = None) -> Basis:
    """PCA of `vectors` (n, D): the first three axes (zero-padded when fewer exist), signs fixed.

    From the D x D covariance (eigh), which is much faster than an SVD of the n x D sample for n >> D.

    Args:
        vectors: The sample of embeddings (n, D).
        n_rows: Rows the sample was drawn from (recorded in the basis); default n.

    Returns:
        The Basis, its colour range the 1st..99th percentiles of the sample's scores.

    Raises:
        InputError: No vectors.
    """
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or not len(x):
        raise InputError("no embeddings to fit the colour basis on")
    mean = x.mean(axis=0)
    centred = x - mean
    values, axes = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(values)[::-1][:3]
    order = order[values[order] > values.max() * 1e-12]  # an axis without variance stays zero
    components = np.zeros((3, x.shape[1]))
    components[:len(order)] = axes[:, order].T
    for row in components:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1
    basis = Basis(mean, components, np.zeros(3), np.ones(3), n_sample=len(x), n_rows=n_rows or len(x))
    basis.lo, basis.hi = np.percentile(basis.scores(x), PERCENTILES, axis=0)
    return basis


def sample_embeddings(files: Sequence[str], size: int = SAMPLE_SIZE, seed: int = 0,
                      batch_rows: int = sample_lib.BATCH_ROWS) -> sample_lib.Reservoir:
    """A uniform sample of at most `size` pooled embeddings over all rows, streamed (memory: size + a batch).

    Args:
        files: The run's embedding files.
        size: Most embeddings kept (default 20 000).
        seed: Random seed of the reservoir.
        batch_rows: Rows read at a time.

    Returns:
        The Reservoir: `.vectors` (n, D) and `.seen` (rows read).
    """
    reservoir = sample_lib.Reservoir(size, seed)
    for batch in sample_lib.iter_batches(files, ["embedding"], batch_rows):
        reservoir.add(sample_lib.vectors(batch.column("embedding")))
    return reservoir


def load_or_fit_basis(files: Sequence[str], path: str, refit: bool = False, size: int = SAMPLE_SIZE) -> Basis:
    """The basis at `path`, or one fitted on a sample of `files` and saved there.

    Args:
        files: The run's embedding files.
        path: The basis JSON to read, or to write when missing.
        refit: Fit and overwrite even if `path` exists.
        size: Embeddings sampled for the fit (default 20 000).

    Returns:
        The Basis.

    Raises:
        InputError: `path` is not a colour basis, or there are no embeddings to fit on.
    """
    if os.path.exists(path) and not refit:
        with open(path, encoding="utf-8") as handle:
            return Basis.from_json(json.load(handle))
    reservoir = sample_embeddings(files, size)
    basis = fit_basis(reservoir.vectors, reservoir.seen)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(basis.to_json(), handle)
    return basis


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ZoneRaster:
    """RGBA picture of one UTM zone's tiles (alpha 0 where there is none), north up."""

    epsg: int
    rgba: np.ndarray  # (rows, cols, 4) uint8
    left: float  # easting of the left edge (m)
    top: float  # northing of the top edge (m)
    cell_m: float  # ground size of one pixel (m)
    tiles: int = 0

    @property
    def transform(self):
        from rasterio.transform import from_origin

        return from_origin(self.left, self.top, self.cell_m, self.cell_m)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"


@dataclasses.dataclass
class _Extent:
    size_m: float
    col_min: int
    col_max: int
    top_min: int
    top_max: int

    def grow(self, col: np.ndarray, top: np.ndarray) -> None:
        self.col_min, self.col_max = min(self.col_min, int(col.min())), max(self.col_max, int(col.max()))
        self.top_min, self.top_max = min(self.top_min, int(top.min())), max(self.top_max, int(top.max()))


_POSITION = [*sample_lib.POSITION_COLUMNS, *sample_lib.WINDOW_COLUMNS]


def zone_extents(files: Sequence[str], window: Window) -> Dict[int, _Extent]:
    """Per UTM zone (EPSG), the tile size and the span of tile columns / top edges in `window`."""
    extents: Dict[int, _Extent] = {}
    for batch in sample_lib.iter_batches(files, _POSITION, batch_rows=65536):
        batch = sample_lib.in_window(batch, window)
        if not batch.num_rows:
            continue
        where = sample_lib.tile_positions(batch)
        for epsg in np.unique(where["epsg"]):
            mask = where["epsg"] == epsg
            sizes = np.unique(where["size_m"][mask])
            extent = extents.get(int(epsg))
            if len(sizes) > 1 or (extent is not None and extent.size_m != sizes[0]):
                raise InputError(f"EPSG:{epsg} holds tiles of several sizes ({sorted(set(sizes))} m); "
                                 f"map one tile grid at a time")
            if extent is None:
                extent = extents[int(epsg)] = _Extent(float(sizes[0]), 2 ** 62, -2 ** 62, 2 ** 62, -2 ** 62)
            extent.grow(where["col"][mask], where["top"][mask])
    return extents


def has_cells(files: Sequence[str]) -> bool:
    import pyarrow.parquet as pq

    return all("grid" in pq.ParquetFile(f).schema_arrow.names for f in files)


def draw(files: Sequence[str], basis: Basis, window: Window, cells: bool = False) -> Dict[int, ZoneRaster]:
    """Per UTM zone, the tiles of `window` coloured by `basis`: one pixel per tile, or its feature cells.

    Args:
        files: The run's embedding files.
        basis: The colour basis.
        window: The time window to draw.
        cells: Draw each tile's last-stage feature cells (runs written with --grid) instead of one pixel.

    Returns:
        {EPSG: ZoneRaster}.

    Raises:
        InputError: No rows in `window`, tiles of several sizes in one zone, or unequal or non-square grids.
    """
    extents = zone_extents(files, window)
    if not extents:
        raise InputError(f"no rows in window {window}")
    columns = _POSITION + (["grid", "grid_shape"] if cells else ["embedding"])
    rasters: Dict[int, ZoneRaster] = {}
    per_side = None
    for batch in sample_lib.iter_batches(files, columns, CELL_BATCH_ROWS if cells else sample_lib.BATCH_ROWS):
        batch = sample_lib.in_window(batch, window)
        if not batch.num_rows:
            continue
        where = sample_lib.tile_positions(batch)
        if cells:
            shapes = {tuple(s) for s in batch.column("grid_shape").to_pylist()}
            if len(shapes) != 1 or None in shapes:
                raise InputError(f"rows with missing or different feature-grid shapes ({sorted(shapes, key=str)})")
            d, h, w = shapes.pop()
            if h != w or (per_side is not None and per_side != h):
                raise InputError(f"feature grids must be square and alike, got {h} x {w}")
            per_side = h
            grids = sample_lib.vectors(batch.column("grid")).reshape(-1, d, h, w)
            colours = basis.rgb(grids.transpose(0, 2, 3, 1))  # (n, h, w, 3), row 0 = north
        else:
            per_side = 1
            colours = basis.rgb(sample_lib.vectors(batch.column("embedding")))[:, None, None, :]
        steps = np.arange(per_side)
        for epsg in np.unique(where["epsg"]):
            extent = extents[int(epsg)]
            raster = rasters.get(int(epsg))
            if raster is None:
                rows = (extent.top_max - extent.top_min + 1) * per_side
                cols = (extent.col_max - extent.col_min + 1) * per_side
                raster = rasters[int(epsg)] = ZoneRaster(
                    int(epsg), np.zeros((rows, cols, 4), np.uint8), left=extent.col_min * extent.size_m,
                    top=extent.top_max * extent.size_m, cell_m=extent.size_m / per_side)
            mask = where["epsg"] == epsg
            r = ((extent.top_max - where["top"][mask]) * per_side)[:, None, None] + steps[None, :, None]
            c = ((where["col"][mask] - extent.col_min) * per_side)[:, None, None] + steps[None, None, :]
            raster.rgba[r, c, :3] = colours[mask]
            raster.rgba[r, c, 3] = 255
    for raster in rasters.values():  # counted from what was drawn: a key written twice is one tile
        raster.tiles = int(np.count_nonzero(raster.rgba[..., 3])) // per_side ** 2  # type: ignore[operator]  # set by now
    return rasters


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

def geotiff_paths(path: str, epsgs: Sequence[int]) -> Dict[int, str]:
    """One zone: `path` itself; several: `<stem>-<epsg><ext>` each."""
    if len(epsgs) == 1:
        return {epsgs[0]: path}
    stem, ext = os.path.splitext(path)
    return {epsg: f"{stem}-{epsg}{ext or '.tif'}" for epsg in epsgs}


def write_geotiffs(rasters: Dict[int, ZoneRaster], path: str) -> List[str]:
    """A cloud-optimised RGBA GeoTIFF per zone, in the zone's UTM CRS.

    Args:
        rasters: {EPSG: ZoneRaster} from `draw`.
        path: The GeoTIFF; with several zones `<stem>-<epsg><ext>` each.

    Returns:
        The paths written.
    """
    import rasterio
    from rasterio.enums import ColorInterp

    written = []
    for epsg, out in geotiff_paths(path, sorted(rasters)).items():
        raster = rasters[epsg]
        rows, cols, _ = raster.rgba.shape
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with rasterio.open(out, "w", driver="COG", width=cols, height=rows, count=4, dtype="uint8",
                           crs=raster.crs, transform=raster.transform, compress="deflate") as dst:
            dst.write(np.moveaxis(raster.rgba, -1, 0))
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            dst.update_tags(DESCRIPTION="DynamicVis embeddings, PCA components 1-3 as RGB",
                            CELL_M=f"{raster.cell_m:g}", TILES=str(raster.tiles))
        written.append(out)
    return written


@dataclasses.dataclass
class Mosaic:
    rgba: np.ndarray  # (rows, cols, 4) uint8
    crs: str
    transform: object  # affine.Affine of `crs`
    cell_m: float
    lonlat_bounds: tuple  # west, south, east, north


def mosaic(rasters: Dict[int, ZoneRaster]) -> Mosaic:
    """One picture of all zones: the zone itself if there is one, else all warped (nearest) onto an
    equidistant cylindrical grid true to scale at the run's centre latitude.

    Args:
        rasters: {EPSG: ZoneRaster} from `draw`.

    Returns:
        The Mosaic (RGBA, CRS, transform, metres per pixel, lon/lat bounds).
    """
    from rasterio.warp import Resampling, reproject, transform_bounds

    bounds = []
    for raster in rasters.values():
        rows, cols, _ = raster.rgba.shape
        bounds.append(transform_bounds(raster.crs, "EPSG:4326", raster.left, raster.top - rows * raster.cell_m,
                                       raster.left + cols * raster.cell_m, raster.top))
    west, south = min(b[0] for b in bounds), min(b[1] for b in bounds)
    east, north = max(b[2] for b in bounds), max(b[3] for b in bounds)
    if len(rasters) == 1:
        raster = next(iter(rasters.values()))
        return Mosaic(raster.rgba, raster.crs, raster.transform, raster.cell_m, (west, south, east, north))
    import pyproj
    from rasterio.transform import from_origin

    lat0, lon0 = (south + north) / 2, (west + east) / 2
    crs = f"+proj=eqc +lat_ts={lat0} +lon_0={lon0} +datum=WGS84 +units=m +no_defs"
    to_eqc = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xs, ys = to_eqc.transform([west, east, west, east], [south, south, north, north])
    cell = min(r.cell_m for r in rasters.values())
    cell = max(cell, max(max(xs) - min(xs), max(ys) - min(ys)) / (2 * PNG_MAX_PX))
    cols, rows = int(math.ceil((max(xs) - min(xs)) / cell)), int(math.ceil((max(ys) - min(ys)) / cell))
    transform = from_origin(min(xs), max(ys), cell, cell)
    picture = np.zeros((4, rows, cols), np.uint8)
    for raster in rasters.values():
        warped = np.zeros_like(picture)
        reproject(np.moveaxis(raster.rgba, -1, 0), warped, src_transform=raster.transform, src_crs=raster.crs,
                  dst_transform=transform, dst_crs=crs, resampling=Resampling.nearest)
        drawn = warped[3] > 0
        picture[:, drawn] = warped[:, drawn]
    return Mosaic(np.moveaxis(picture, 0, -1), crs, transform, cell, (west, south, east, north))


def _nice_length(max_m: float) -> float:
    """The largest 1, 2 or 5 x 10^k metres not above `max_m`."""
    power = 10 ** math.floor(math.log10(max_m))
    return max(m * power for m in (1, 2, 5) if m * power <= max_m)


def _metres(value: float) -> str:
    return f"{value / 1000:g} km" if value >= 1000 else f"{value:g} m"


def write_png(rasters: Dict[int, ZoneRaster], path: str, window: Window) -> str:
    """Quick-look PNG: the mosaic (enlarged or shrunk by whole steps) over a footer with a scale bar,
    the extent, the window and the zones.

    Args:
        rasters: {EPSG: ZoneRaster} from `draw`.
        path: The PNG to write.
        window: The time window drawn (shown in the footer).

    Returns:
        `path`.
    """
    from PIL import Image, ImageDraw, ImageFont

    whole = mosaic(rasters)
    metres_per_px, (west, south, east, north) = whole.cell_m, whole.lonlat_bounds
    image = Image.fromarray(whole.rgba, "RGBA")
    side = max(image.size)
    if side < PNG_MIN_PX:
        factor = PNG_MIN_PX // side
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
        metres_per_px /= factor
    elif side > PNG_MAX_PX:
        factor = math.ceil(side / PNG_MAX_PX)
        image = image.resize((max(1, image.width // factor), max(1, image.height // factor)), Image.Resampling.NEAREST)
        metres_per_px *= factor
    font = ImageFont.load_default(size=13)
    width = max(image.width, 360)
    footer = 58
    canvas = Image.new("RGB", (width, image.height + footer), (255, 255, 255))
    checker = Image.new("RGB", image.size, (235, 235, 235))
    canvas.paste(checker, (0, 0))
    canvas.paste(image, (0, 0), image)
    pen = ImageDraw.Draw(canvas)
    bar_m = _nice_length(metres_per_px * width / 3)
    bar_px = int(round(bar_m / metres_per_px))
    y = image.height + 12
    pen.rectangle([8, y, 8 + bar_px, y + 5], fill=(0, 0, 0))
    pen.text((14 + bar_px, y - 5), _metres(bar_m), fill=(0, 0, 0), font=font)
    tiles = sum(r.tiles for r in rasters.values())
    zones = ", ".join(f"EPSG:{e}" for e in sorted(rasters))
    pen.text((8, y + 12), f"lon {west:.4f}..{east:.4f}, lat {south:.4f}..{north:.4f}  ({zones})",
             fill=(0, 0, 0), font=font)
    pen.text((8, y + 28), f"{tiles} tiles, {window}, PCA 1-3 -> RGB", fill=(0, 0, 0), font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, optimize=True)
    return path


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.map", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="the run's --output directory (embeddings-*.parquet)")
    p.add_argument("--png", help="quick-look PNG to write (default: INPUT/map.png when no --geotiff)")
    p.add_argument("--geotiff", help="GeoTIFF (COG) to write; one per UTM zone, as NAME-EPSG.tif when several")
    p.add_argument("--window", metavar="START", help="start date of the time window to draw (if several)")
    p.add_argument("--pooled", action="store_true", help="one pixel per tile even when the run has --grid cells")
    p.add_argument("--basis", help=f"colour basis JSON (default: INPUT/{BASIS_FILE}; fitted and saved if missing)")
    p.add_argument("--refit", action="store_true", help="fit the colour basis again and overwrite it")
    p.add_argument("--sample-size", type=int, default=SAMPLE_SIZE,
                   help=f"embeddings sampled to fit the basis (default {SAMPLE_SIZE})")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m pipeline.map` (see `parser` for the flags); prints the files written.

    Args:
        argv: The arguments; default sys.argv[1:].

    Returns:
        0, or 2 after an `error: ...` line on stderr for bad input.
    """
    args = parser().parse_args(argv)
    try:
        if args.sample_size < 3:
            raise InputError(f"--sample-size must be >= 3, got {args.sample_size}")
        files = sample_lib.shard_files(args.input)
        window = sample_lib.pick_window(files, args.window)
        basis = load_or_fit_basis(files, args.basis or os.path.join(args.input, BASIS_FILE), args.refit,
                                  args.sample_size)
        rasters = draw(files, basis, window, cells=not args.pooled and has_cells(files))
        png = args.png or (None if args.geotiff else os.path.join(args.input, "map.png"))
        written = write_geotiffs(rasters, args.geotiff) if args.geotiff else []
        if png:
            written.append(write_png(rasters, png, window))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
