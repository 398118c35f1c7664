"""What the fake Earth Engine server receives: expression, bands, CRS, grid; settings and plans."""
from __future__ import annotations

import datetime as dt

import pytest

import earth_engine
from earth_engine.settings import COMPUTE_PIXELS_MAX_BYTES
from tiles.records import Tile, TileRequest, TimeWindow

WINDOW = TimeWindow(dt.date(2022, 6, 1), dt.date(2022, 9, 1))


def expected_image(crs, bounds, *, composite="median", cloudy_pct=30, cloud_mask=None):
    """The S2 image written out independently of earth_engine.image, to compare serialisations."""
    import ee

    region = ee.Geometry.Rectangle(list(bounds), crs, False)
    col = (ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED").filterBounds(region)
           .filterDate("2022-06-01", "2022-09-01")
           .filter(ee.Filter.lte("CLOUDY_PIXEL_PERCENTAGE", cloudy_pct)))
    if cloud_mask == "scl":
        def mask(image):
            scl = image.select("SCL")
            clear = scl.eq(2).Or(scl.eq(4)).Or(scl.eq(5)).Or(scl.eq(6)).Or(scl.eq(7)).Or(scl.eq(11))
            return image.updateMask(clear)
        col = col.map(mask)
    if composite == "mosaic":
        col = col.sort("CLOUDY_PIXEL_PERCENTAGE", False)
    bands = ["B4", "B3", "B2"]
    placeholder = ee.Image.constant([0, 0, 0]).rename(bands).toUint16().updateMask(0)
    stack = ee.ImageCollection([placeholder]).merge(col.select(bands))
    image = stack.median() if composite == "median" else stack.mosaic()
    count = stack.select("B4").count().rename("SCENE_COUNT")
    return image.select(bands).unmask(0).toUint16().addBands(count.unmask(0).toUint16())


@pytest.mark.parametrize("composite,cloud_mask,cloudy_pct", [
    ("median", None, 30), ("mosaic", None, 30), ("median", "scl", 15)])
def test_request_matches_expected_expression_and_grid(fake_ee, composite, cloud_mask, cloudy_pct):
    import ee

    tile = Tile(32733, 41, 702, 32, 10.0)  # southern-hemisphere zone 33
    s2 = earth_engine.S2Settings(composite=composite, cloud_mask=cloud_mask, cloudy_pct=cloudy_pct)
    [result] = earth_engine.fetch_tiles([TileRequest(tile, WINDOW)], s2, fake_ee.settings)

    assert isinstance(result, earth_engine.fetch.TilePixels)
    [call] = fake_ee.server.calls
    size = 320.0
    bounds = (41 * size, 702 * size, 42 * size, 703 * size)
    expected = expected_image("EPSG:32733", bounds, composite=composite, cloudy_pct=cloudy_pct,
                              cloud_mask=cloud_mask)
    assert call.body["expression"] == ee.serializer.encode(expected, for_cloud_api=True)
    assert call.body["fileFormat"] == "NPY"
    assert call.body["bandIds"] == ["B4", "B3", "B2", "SCENE_COUNT"]
    assert call.body["grid"] == {
        "dimensions": {"width": 32, "height": 32},
        "affineTransform": {"scaleX": 10.0, "shearX": 0, "translateX": 41 * size,
                            "shearY": 0, "scaleY": -10.0, "translateY": 703 * size},
        "crsCode": "EPSG:32733",
    }
    assert call.dates == ("2022-06-01", "2022-09-01")
    assert tuple(tile.transform) == call.transform


def test_cloud_score_plus_links_scores_and_thresholds(fake_ee):
    tile = Tile(32631, 1, 1, 16, 10.0)
    s2 = earth_engine.S2Settings(cloud_mask="cloud_score_plus", cloud_score_threshold=0.65)
    earth_engine.fetch_tiles([TileRequest(tile, WINDOW)], s2, fake_ee.settings)
    import ee

    text = str(fake_ee.server.calls[0].body["expression"])
    assert "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED" in text and "ImageCollection.combine" not in text
    assert "cs_cdf" in text and "0.65" in text
    # Earth Engine's documented recipe, written out independently: linkCollection on system:index.
    region = ee.Geometry.Rectangle([160.0, 160.0, 320.0, 320.0], "EPSG:32631", False)
    scenes = (ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED").filterBounds(region)
              .filterDate("2022-06-01", "2022-09-01").filter(ee.Filter.lte("CLOUDY_PIXEL_PERCENTAGE", 30))
              .linkCollection(ee.ImageCollection("GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"), ["cs_cdf"])
              .map(lambda image: image.updateMask(image.select("cs_cdf").gte(0.65))))
    bands = ["B4", "B3", "B2"]
    placeholder = ee.Image.constant([0, 0, 0]).rename(bands).toUint16().updateMask(0)
    stack = ee.ImageCollection([placeholder]).merge(scenes.select(bands))
    expected = (stack.median().select(bands).unmask(0).toUint16()
                .addBands(stack.select("B4").count().rename("SCENE_COUNT").unmask(0).toUint16()))
    assert fake_ee.server.calls[0].body["expression"] == ee.serializer.encode(expected, for_cloud_api=True)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="composite"):
        earth_engine.S2Settings(composite="mean")
    with pytest.raises(ValueError, match="cloud_mask"):
        earth_engine.S2Settings(cloud_mask="fmask")
    with pytest.raises(ValueError, match="project"):
        earth_engine.EESettings(credentials="anonymous")


def test_quota_defaults_follow_project_limits():
    assert earth_engine.S2Settings().concurrency == 40
    assert earth_engine.S2Settings().rate == 100
    s2 = earth_engine.S2Settings(expected_workers=8)
    assert (s2.concurrency, s2.rate) == (5, 12.5)
    assert earth_engine.EESettings().endpoint == "https://earthengine-highvolume.googleapis.com"


def test_budget_counts_a_mask_byte_per_band():
    s2 = earth_engine.S2Settings()
    assert s2.bytes_per_pixel == 8 and s2.ee_bytes_per_pixel == 12  # 4 uint16 bands, + 1 mask byte each
    assert earth_engine.max_request_pixels(s2) == 2048 * 2048 == COMPUTE_PIXELS_MAX_BYTES // 12
    assert earth_engine.max_request_pixels(earth_engine.S2Settings(request_px=1000)) == 1000
