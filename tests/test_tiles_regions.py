import json
import logging

import pytest
import shapely

from tiles import InputError, Region, load_regions, parse_bbox, parse_geojson, parse_points_csv


# ------------------------------------------------------------------------------------------- bbox

def test_bbox_simple_and_id_is_stable():
    region = parse_bbox("5.9,45.8,10.5,47.8")
    assert region.geometry.equals(shapely.box(5.9, 45.8, 10.5, 47.8))
    assert region.request_id == parse_bbox([5.9, 45.8, 10.5, 47.8]).request_id
    assert region.request_id.startswith("bbox-") and region.request_id != parse_bbox("6,45.8,10.5,47.8").request_id
    assert parse_bbox("5.9,45.8,10.5,47.8", request_id="alps").request_id == "alps"


def test_bbox_across_antimeridian_is_two_boxes():
    region = parse_bbox("179,10,-179,11")
    assert region.geometry.geom_type == "MultiPolygon"
    assert region.geometry.area == pytest.approx(2.0)
    assert region.geometry.bounds == (-180.0, 10.0, 180.0, 11.0)


def test_bbox_clipped_to_utm_latitudes(caplog):
    with caplog.at_level(logging.WARNING):
        region = parse_bbox("10,70,20,89")
    assert region.geometry.bounds == (10.0, 70.0, 20.0, 84.0)
    assert "clipped" in caplog.text


@pytest.mark.parametrize("text, message", [
    ("1,2,3", r"must be four numbers W,S,E,N"),
    ("a,2,3,4", r"must be four numbers W,S,E,N"),
    ("10,50,20,40", r"south 50 must be less than north 40"),
    ("10,45,10,46", r"west and east are both 10"),
    ("-190,10,20,40", r"west longitude -190 is outside \[-180, 180\]"),
    ("10,10,200,40", r"east longitude 200 is outside"),
    ("10,-95,20,40", r"south latitude -95 is outside \[-90, 90\]"),
    ("10,10,20,nan", r"non-finite"),
    ("10,85,20,89", r"entirely outside the UTM latitudes -80..84"),
])
def test_bad_bbox(text, message):
    with pytest.raises(InputError, match=message):
        parse_bbox(text)


def test_bad_request_id():
    with pytest.raises(InputError, match="request id 'a b' must be 1-64 characters"):
        parse_bbox("1,1,2,2", request_id="a b")


# ---------------------------------------------------------------------------------------- GeoJSON

def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


SQUARE_A = [[[10, 45], [11, 45], [11, 46], [10, 46], [10, 45]]]
SQUARE_B = [[[10.5, 45.5], [11.5, 45.5], [11.5, 46.5], [10.5, 46.5], [10.5, 45.5]]]


def test_geojson_polygon_feature_and_collection(tmp_path):
    polygon = parse_geojson(_write(tmp_path, "p.json", {"type": "Polygon", "coordinates": SQUARE_A}))
    assert polygon.geometry.area == pytest.approx(1.0)
    feature = parse_geojson(_write(tmp_path, "f.json", {"type": "Feature", "properties": {},
                                                         "geometry": {"type": "Polygon", "coordinates": SQUARE_A}}))
    assert feature.geometry.equals(polygon.geometry)
    collection = parse_geojson(_write(tmp_path, "fc.geojson", {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": SQUARE_A}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [SQUARE_B]}}]}))
    assert collection.geometry.area == pytest.approx(1.75)  # union: the overlap counts once
    assert collection.request_id.startswith("geojson-")


def test_geojson_multipolygon_overlapping_parts_are_unioned(tmp_path):
    region = parse_geojson(_write(tmp_path, "m.json", {"type": "MultiPolygon", "coordinates": [SQUARE_A, SQUARE_B]}))
    assert region.geometry.is_valid and region.geometry.area == pytest.approx(1.75)


BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}


@pytest.mark.parametrize("data, message", [
    ("{not json", r"not valid JSON"),
    ({"coordinates": []}, r"not a GeoJSON object \(no 'type'\)"),
    ({"type": "Point", "coordinates": [1, 2]}, r"'Point' is not supported; use Polygon or MultiPolygon"),
    ({"type": "Polygon", "coordinates": []}, r"Polygon is empty"),
    ({"type": "FeatureCollection", "features": []}, r"FeatureCollection has no features"),
    ({"type": "Feature", "geometry": None}, r"has no geometry"),
    ({"type": "Polygon", "coordinates": [[[1, 2], [3]]]}, r"malformed Polygon coordinates"),
    (BOWTIE, r"invalid Polygon \(Self-intersection\[1 1\]\); fix it \(e.g. shapely.make_valid"),
    ({"type": "Polygon", "coordinates": [[[170, 0], [190, 0], [190, 1], [170, 1], [170, 0]]]},
     r"lon in \[-180, 180\].*split into a MultiPolygon"),
    ({"type": "Polygon", "coordinates": [[[0, 85], [1, 85], [1, 86], [0, 86], [0, 85]]]},
     r"entirely outside the UTM latitudes"),
    ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": BOWTIE}]},
     r"features\[0\]: invalid Polygon"),
])
def test_bad_geojson(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        parse_geojson(_write(tmp_path, "bad.json", data))


def test_geojson_repair_and_missing_file(tmp_path):
    region = parse_geojson(_write(tmp_path, "bowtie.json", BOWTIE), repair=True)
    assert region.geometry.is_valid and region.geometry.area == pytest.approx(2.0)
    with pytest.raises(InputError, match="cannot read .*nope.json"):
        parse_geojson(str(tmp_path / "nope.json"))


# ----------------------------------------------------------------------------------------- points

def test_points_csv_with_and_without_header(tmp_path):
    plain = parse_points_csv(_write(tmp_path, "a.csv", "10.1,45.2\n10.3,45.4\n\n"), buffer_m=500)
    assert len(plain) == 1 and plain[0].points == ((10.1, 45.2), (10.3, 45.4)) and plain[0].buffer_m == 500
    headed = parse_points_csv(_write(tmp_path, "b.csv", "lon,lat,id\n10.1,45.2,farm-1\n10.3,45.4,farm-2\n"
                                                         "10.2,45.3,farm-1\n"), buffer_m=0)
    assert [(r.request_id, r.points) for r in headed] == [
        ("farm-1", ((10.1, 45.2), (10.2, 45.3))), ("farm-2", ((10.3, 45.4),))]


def test_points_bad_rows_reported_with_line_numbers(tmp_path):
    path = _write(tmp_path, "bad.csv", "lon,lat\n10,45\nx,45\n10\n200,45\n10,85\n10,45,bad id\n")
    with pytest.raises(InputError) as error:
        parse_points_csv(path, buffer_m=100)
    message = str(error.value)
    assert "5 bad row(s)" in message
    for expected in ("line 3: lon/lat 'x','45' are not numbers", "line 4: expected 2 or 3 columns, got 1",
                     "line 5: lon 200 is outside [-180, 180]", "line 6: lat 85 is outside the UTM latitudes",
                     "line 7: id 'bad id' must be"):
        assert expected in message
    assert "line 2" not in message


@pytest.mark.parametrize("content, buffer_m, message", [
    ("lat,lon\n45,10\n", 10, r"columns must be lon,lat\[,id\]"),
    ("lon,lat\n", 10, r"no points"),
    ("10,45\n", -1, r"--buffer-m -1 must be a finite number of metres >= 0"),
    ("10,45\n", 1e6, r"exceeds 100000 m"),
])
def test_bad_points(tmp_path, content, buffer_m, message):
    with pytest.raises(InputError, match=message):
        parse_points_csv(_write(tmp_path, "p.csv", content), buffer_m=buffer_m)


def test_load_regions(tmp_path):
    csv_path = _write(tmp_path, "p.csv", "10,45\n")
    regions = load_regions(bbox="1,1,2,2", points=csv_path, buffer_m=10, request_id="job")
    assert [r.request_id for r in regions] == ["job", "job"]
    with pytest.raises(InputError, match="a region is required"):
        load_regions()
    with pytest.raises(InputError, match="--points needs --buffer-m"):
        load_regions(points=csv_path)
    with pytest.raises(InputError, match="--buffer-m only applies to --points"):
        load_regions(bbox="1,1,2,2", buffer_m=5)


def test_region_needs_geometry_or_points():
    with pytest.raises(InputError, match="exactly one of a geometry or points"):
        Region("x")
    with pytest.raises(InputError, match="non-empty Polygon or MultiPolygon"):
        Region("x", geometry=shapely.Point(1, 2))


# ---------------------------------------------------------------------------------------- gs://

@pytest.fixture()
def tiny_gcs(monkeypatch):
    """A minimal GCS JSON-API download endpoint; the real google-cloud-storage client talks to it."""
    import http.server
    import threading
    import urllib.parse

    objects = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
            key = path.split("/b/", 1)[-1].replace("/o/", "/", 1)
            body = objects.get(key)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"{}")))
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    yield objects
    server.shutdown()


def test_geojson_from_gcs(tiny_gcs):
    tiny_gcs["bucket/areas/a.json"] = json.dumps({"type": "Polygon", "coordinates": SQUARE_A}).encode()
    region = parse_geojson("gs://bucket/areas/a.json")
    assert region.geometry.area == pytest.approx(1.0)
    with pytest.raises(InputError, match="gs://bucket/missing.json does not exist"):
        parse_geojson("gs://bucket/missing.json")
    with pytest.raises(InputError, match="is not a gs://bucket/object URI"):
        parse_geojson("gs://bucket")
