"""User regions: ``--bbox``, ``--geojson`` and ``--points`` parsed and validated before the pipeline starts.

A ``Region`` is a request id plus either a polygonal lon/lat (WGS84) geometry or a set of points with a
square buffer. Decisions:

- Request ids: the user's name (``request_id=``) if given, else ``<kind>-<12 hex of sha256>`` of the
  canonical bbox text or of the file's bytes (plus the buffer for points), so the same input gives the
  same id on every run and machine. In a points CSV the optional third column ``id`` is the request id of
  that point: rows with the same id form one request. Ids are limited to ``[A-Za-z0-9._-]``, 1-64 chars.
- ``--bbox W,S,E,N``: W > E means the box crosses the antimeridian (W..180 plus -180..E). W == E and
  S >= N are refused.
- Latitudes outside UTM's -80..84 are clipped with a logged warning (Sentinel-2 MGRS tiles stop there
  too); a region with nothing left is refused. Points outside that band are refused.
- GeoJSON (Polygon, MultiPolygon, Feature, FeatureCollection; local path or gs://) is taken literally in
  lon/lat: edges are straight lines in lon/lat and coordinates must be within [-180, 180], so a polygon
  crossing the antimeridian must be split there (RFC 7946 section 3.1.9). All polygons of one file form
  one region (their union, so overlapping polygons do not duplicate tiles); invalid polygons are refused
  unless ``repair=True`` (shapely.make_valid); the parts of a MultiPolygon may
  overlap (that is not an error here: they are unioned).
- Points: the region of a point is the square of side ``2 * buffer_m`` centred on it in the point's own
  UTM zone/hemisphere grid; ``buffer_m == 0`` means just the tile containing the point.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import re
from typing import Iterable, List, Optional, Sequence, Tuple

import shapely
from shapely.geometry import shape

from tiles.errors import InputError
from tiles.grid import UTM_MAX_LAT, UTM_MIN_LAT

log = logging.getLogger(__name__)

MAX_BUFFER_M = 100_000.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_UTM_LATITUDES = shapely.box(-180.0, UTM_MIN_LAT, 180.0, UTM_MAX_LAT)
_POLYGONAL = ("Polygon", "MultiPolygon")
_MAX_LISTED_ERRORS = 20


@dataclasses.dataclass(frozen=True)
class Region:
    """One request's area: polygonal lon/lat ``geometry`` or ``points`` (lon, lat) with a square buffer."""

    request_id: str
    geometry: Optional[shapely.Geometry] = None
    points: Tuple[Tuple[float, float], ...] = ()
    buffer_m: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        if (self.geometry is None) == (not self.points):
            raise InputError("a Region needs exactly one of a geometry or points")
        if self.geometry is not None and (self.geometry.is_empty or self.geometry.geom_type not in _POLYGONAL):
            raise InputError(f"region {self.request_id!r}: geometry must be a non-empty Polygon or MultiPolygon")


def check_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise InputError(f"request id {request_id!r} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return request_id


def _digest(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part)
    return sha.hexdigest()[:12]


def clip_to_utm_latitudes(geometry: shapely.Geometry, what: str) -> shapely.Geometry:
    """Clip to UTM latitudes (-80..84), warning when that changes the region; refuse if nothing is left."""
    min_lat, max_lat = geometry.bounds[1], geometry.bounds[3]
    if min_lat >= UTM_MIN_LAT and max_lat <= UTM_MAX_LAT:
        return geometry
    clipped = shapely.intersection(geometry, _UTM_LATITUDES)
    parts = [p for p in shapely.get_parts(clipped) if p.geom_type == "Polygon" and p.area > 0]
    if not parts:
        raise InputError(f"{what} lies entirely outside the UTM latitudes {UTM_MIN_LAT:g}..{UTM_MAX_LAT:g} "
                         "covered by the tile grid and Sentinel-2; choose a region between those latitudes")
    log.warning("%s extends beyond the UTM latitudes %g..%g; clipped to them", what, UTM_MIN_LAT, UTM_MAX_LAT)
    return shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------------------------------- bbox

def parse_bbox(bbox: str | Sequence[float], request_id: Optional[str] = None) -> Region:
    """``W,S,E,N`` in WGS84 degrees (text or 4 numbers); W > E crosses the antimeridian."""
    text = bbox if isinstance(bbox, str) else ",".join(str(v) for v in bbox)
    fields = [f.strip() for f in text.split(",")]
    try:
        if len(fields) != 4:
            raise ValueError
        west, south, east, north = (float(f) for f in fields)
    except ValueError:
        raise InputError(f"--bbox {text!r} must be four numbers W,S,E,N in degrees, "
                         "e.g. --bbox 5.9,45.8,10.5,47.8") from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise InputError(f"--bbox {text!r} contains a non-finite number")
    for name, lon in (("west", west), ("east", east)):
        if not -180.0 <= lon <= 180.0:
            raise InputError(f"--bbox {name} longitude {lon:g} is outside [-180, 180]")
    for name, lat in (("south", south), ("north", north)):
        if not -90.0 <= lat <= 90.0:
            raise InputError(f"--bbox {name} latitude {lat:g} is outside [-90, 90]")
    if south >= north:
        raise InputError(f"--bbox south {south:g} must be less than north {north:g} (order is W,S,E,N)")
    if west == east:
        raise InputError(f"--bbox west and east are both {west:g}: the box has no width (order is W,S,E,N)")
    if west < east:
        geometry = shapely.box(west, south, east, north)
    else:  # crosses the antimeridian
        geometry = shapely.MultiPolygon([shapely.box(west, south, 180.0, north),
                                         shapely.box(-180.0, south, east, north)])
    canonical = f"bbox:{west!r},{south!r},{east!r},{north!r}"
    request_id = request_id or f"bbox-{_digest(canonical.encode())}"
    return Region(request_id, clip_to_utm_latitudes(geometry, f"--bbox {text}"), source=canonical)


# ------------------------------------------------------------------------------------------- files

def read_bytes(path: str) -> bytes:
    """Read a local file or a ``gs://bucket/object`` (honours STORAGE_EMULATOR_HOST)."""
    if path.startswith("gs://"):
        bucket_name, _, blob_name = path[len("gs://"):].partition("/")
        if not bucket_name or not blob_name:
            raise InputError(f"{path!r} is not a gs://bucket/object URI")
        from google.cloud import storage  # type: ignore[attr-defined]  # lazily: only gs:// inputs need it
        from google.api_core import exceptions as gexc
        try:
            return storage.Client().bucket(bucket_name).blob(blob_name).download_as_bytes()
        except gexc.NotFound:
            raise InputError(f"{path} does not exist") from None
        except gexc.GoogleAPIError as error:
            raise InputError(f"cannot read {path}: {error}") from None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None


# ---------------------------------------------------------------------------------------- GeoJSON

def _geojson_geometries(data: object, path: str) -> Iterable[Tuple[str, object]]:
    """Yield (label for messages, geometry dict) for every geometry in a GeoJSON object (as found: ``_polygonal``
    checks it)."""
    if not isinstance(data, dict) or "type" not in data:
        raise InputError(f"{path}: not a GeoJSON object (no 'type')")
    kind = data["type"]
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list) or not features:
            raise InputError(f"{path}: FeatureCollection has no features")
        for index, feature in enumerate(features):
            if not isinstance(feature, dict) or feature.get("type") != "Feature":
                raise InputError(f"{path}: features[{index}] is not a Feature")
            yield f"{path} features[{index}]", feature.get("geometry")
    elif kind == "Feature":
        yield path, data.get("geometry")
    else:
        yield path, data


def _polygonal(label: str, geometry: object, repair: bool) -> shapely.Geometry:
    if not isinstance(geometry, dict) or geometry.get("type") is None:
        raise InputError(f"{label}: has no geometry")
    if geometry["type"] not in _POLYGONAL:
        raise InputError(f"{label}: geometry type {geometry['type']!r} is not supported; "
                         "use Polygon or MultiPolygon (for points use --points with --buffer-m)")
    try:
        geom = shape(geometry)
    except Exception as error:  # shapely raises several types for malformed coordinate arrays
        raise InputError(f"{label}: malformed {geometry['type']} coordinates ({error})") from None
    if geom.is_empty:
        raise InputError(f"{label}: {geometry['type']} is empty")
    min_x, min_y, max_x, max_y = geom.bounds
    if not all(math.isfinite(v) for v in geom.bounds):
        raise InputError(f"{label}: coordinates are not finite numbers")
    if min_x < -180.0 or max_x > 180.0 or min_y < -90.0 or max_y > 90.0:
        raise InputError(f"{label}: coordinates must be lon in [-180, 180] and lat in [-90, 90] (lon first); "
                         f"got lon {min_x:g}..{max_x:g}, lat {min_y:g}..{max_y:g}. A polygon crossing the "
                         "antimeridian must be split into a MultiPolygon there (RFC 7946 3.1.9)")
    # Parts of a MultiPolygon may overlap (they are unioned); each part itself must be a valid polygon.
    parts = list(shapely.get_parts(geom))
    for index, part in enumerate(parts):
        if part.is_valid:
            continue
        reason = shapely.is_valid_reason(part)
        where = f"polygon {index} of the MultiPolygon" if geometry["type"] == "MultiPolygon" else "Polygon"
        if not repair:
            raise InputError(f"{label}: invalid {where} ({reason}); fix it (e.g. shapely.make_valid "
                             "or `ogr2ogr -makevalid`), or in Python pass repair=True to tiles.regions.load_regions")
        log.warning("%s: repaired invalid %s (%s) with make_valid", label, where, reason)
        repaired = [p for p in shapely.get_parts(shapely.make_valid(part)) if p.geom_type == "Polygon" and p.area > 0]
        if not repaired:
            raise InputError(f"{label}: nothing polygonal is left after repairing {where} ({reason})")
        parts[index] = shapely.union_all(repaired)
    geom = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    if geom.area <= 0:
        raise InputError(f"{label}: {geometry['type']} has zero area")
    return geom


def parse_geojson(path: str, request_id: Optional[str] = None, repair: bool = False) -> Region:
    """One region from all polygons of a GeoJSON file (their union)."""
    raw = read_bytes(path)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    geometries = [_polygonal(label, geometry, repair) for label, geometry in _geojson_geometries(data, path)]
    union = geometries[0] if len(geometries) == 1 else shapely.union_all(geometries)
    parts = [p for p in shapely.get_parts(union) if p.geom_type == "Polygon" and p.area > 0]
    geometry = shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]
    request_id = request_id or f"geojson-{_digest(raw)}"
    return Region(request_id, clip_to_utm_latitudes(geometry, path), source=path)


# ------------------------------------------------------------------------------------------ points

def _check_buffer(buffer_m: float) -> float:
    try:
        value = float(buffer_m)
    except (TypeError, ValueError):
        raise InputError(f"--buffer-m {buffer_m!r} is not a number of metres") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"--buffer-m {buffer_m!r} must be a finite number of metres >= 0")
    if value > MAX_BUFFER_M:
        raise InputError(f"--buffer-m {value:g} exceeds {MAX_BUFFER_M:g} m; for large areas use --bbox or --geojson")
    return value


def _is_header(row: List[str]) -> bool:
    try:
        float(row[0])
        return False
    except (ValueError, IndexError):
        return True


def parse_points_csv(path: str, buffer_m: float, request_id: Optional[str] = None) -> List[Region]:
    """Regions from a CSV of ``lon,lat[,id]`` (optional header); one region per id (or one for the file).

    All bad rows are reported together, with their line numbers.
    """
    buffer_m = _check_buffer(buffer_m)
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    default_id = request_id or f"points-{_digest(raw, repr(buffer_m).encode())}"
    groups: dict = {}
    errors: List[str] = []
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        row = [field.strip() for field in row]
        if not any(row):
            continue
        if line_no == 1 and _is_header(row):
            if row[0].lower().startswith("lat"):
                raise InputError(f"{path}: header {','.join(row)!r}: columns must be lon,lat[,id] (lon first)")
            continue
        problem, point, point_id = _parse_point_row(row)
        if problem:
            errors.append(f"line {line_no}: {problem}")
            continue
        if point_id is not None and not _REQUEST_ID.match(point_id):
            errors.append(f"line {line_no}: id {point_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
            continue
        groups.setdefault(point_id or default_id, []).append(point)
    if errors:
        listed = "\n  ".join(errors[:_MAX_LISTED_ERRORS])
        more = f"\n  ... and {len(errors) - _MAX_LISTED_ERRORS} more" if len(errors) > _MAX_LISTED_ERRORS else ""
        raise InputError(f"{path}: {len(errors)} bad row(s) (expected lon,lat[,id] with lon in [-180, 180] and "
                         f"lat in [{UTM_MIN_LAT:g}, {UTM_MAX_LAT:g}]):\n  {listed}{more}")
    if not groups:
        raise InputError(f"{path}: no points (expected rows of lon,lat[,id])")
    return [Region(rid, points=tuple(points), buffer_m=buffer_m, source=path)
            for rid, points in sorted(groups.items())]


def _parse_point_row(row: List[str]) -> Tuple[Optional[str], Tuple[float, float], Optional[str]]:
    """(problem or None, (lon, lat), id or None) of one CSV row."""
    if len(row) not in (2, 3):
        return f"expected 2 or 3 columns, got {len(row)}", (0.0, 0.0), None
    try:
        lon, lat = float(row[0]), float(row[1])
    except ValueError:
        return f"lon/lat {row[0]!r},{row[1]!r} are not numbers", (0.0, 0.0), None
    if not (math.isfinite(lon) and math.isfinite(lat)):
        return "lon/lat must be finite", (0.0, 0.0), None
    if not -180.0 <= lon <= 180.0:
        return f"lon {lon:g} is outside [-180, 180]", (0.0, 0.0), None
    if not UTM_MIN_LAT <= lat <= UTM_MAX_LAT:
        return f"lat {lat:g} is outside the UTM latitudes [{UTM_MIN_LAT:g}, {UTM_MAX_LAT:g}]", (0.0, 0.0), None
    point_id = row[2] if len(row) == 3 and row[2] else None
    return None, (lon, lat), point_id


# -------------------------------------------------------------------------------------- CLI helper

def load_regions(bbox: Optional[str] = None, geojson: Optional[str] = None, points: Optional[str] = None,
                 buffer_m: Optional[float] = None, request_id: Optional[str] = None,
                 repair: bool = False) -> List[Region]:
    """Parse whichever of ``--bbox/--geojson/--points`` were given (at least one)."""
    if bbox is None and geojson is None and points is None:
        raise InputError("a region is required: give --bbox W,S,E,N, --geojson PATH or --points PATH --buffer-m M")
    if points is None and buffer_m is not None:
        raise InputError("--buffer-m only applies to --points")
    regions: List[Region] = []
    if bbox is not None:
        regions.append(parse_bbox(bbox, request_id))
    if geojson is not None:
        regions.append(parse_geojson(geojson, request_id, repair))
    if points is not None:
        if buffer_m is None:
            raise InputError("--points needs --buffer-m (half the side of the square around each point, metres; "
                             "0 = the tile containing the point)")
        regions.extend(parse_points_csv(points, buffer_m, request_id))
    return regions
