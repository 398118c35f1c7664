"""The Sentinel-2 composite of one footprint and time window, as an ``ee.Image`` expression."""
from __future__ import annotations

from typing import Tuple

from earth_engine.settings import SCENE_COUNT_BAND, S2Settings
from tiles.records import TimeWindow

CLOUD_SCORE_PLUS = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
CLOUD_SCORE_BAND = "cs_cdf"
SCL_CLEAR_CLASSES = (2, 4, 5, 6, 7, 11)  # dark area, vegetation, bare, water, unclassified, snow


def footprint(crs: str, bounds: Tuple[float, float, float, float]):
    """A planar rectangle in the tile's own UTM coordinates (no reprojection, no geodesic edges)."""
    import ee

    return ee.Geometry.Rectangle(list(bounds), crs, False)


def s2_image(s2: S2Settings, crs: str, bounds: Tuple[float, float, float, float], window: TimeWindow):
    """The composite, bands ``s2.bands`` as uint16 (0 where masked) plus uint16 ``SCENE_COUNT``.

    An empty collection's composite has no bands at all, so ``select`` would fail the whole request;
    a fully masked placeholder is merged in first so that a footprint without scenes comes back as
    SCENE_COUNT == 0 instead, per pixel, and each tile of a shared request is judged on its own.
    """
    import ee

    region = footprint(crs, bounds)
    scenes = (ee.ImageCollection(s2.collection)
              .filterBounds(region)
              .filterDate(window.start.isoformat(), window.end.isoformat())
              .filter(ee.Filter.lte("CLOUDY_PIXEL_PERCENTAGE", s2.cloudy_pct)))
    scenes = _cloud_masked(s2, scenes, region, window)
    if s2.composite == "mosaic":
        scenes = scenes.sort("CLOUDY_PIXEL_PERCENTAGE", False)  # least cloudy last = on top
    bands = list(s2.bands)
    placeholder = ee.Image.constant([0] * len(bands)).rename(bands).toUint16().updateMask(0)
    stack = ee.ImageCollection([placeholder]).merge(scenes.select(bands))
    composite = stack.median() if s2.composite == "median" else stack.mosaic()
    scene_count = stack.select(bands[0]).count().rename(SCENE_COUNT_BAND)
    return (composite.select(bands).unmask(0).toUint16()
            .addBands(scene_count.unmask(0).toUint16()))


def _cloud_masked(s2: S2Settings, scenes, region, window: TimeWindow):
    import ee

    if s2.cloud_mask == "scl":
        def mask_scl(image):
            scl = image.select("SCL")
            clear = scl.eq(SCL_CLEAR_CLASSES[0])
            for value in SCL_CLEAR_CLASSES[1:]:
                clear = clear.Or(scl.eq(value))
            return image.updateMask(clear)

        return scenes.map(mask_scl)
    if s2.cloud_mask == "cloud_score_plus":
        threshold = s2.cloud_score_threshold

        def mask_cs(image):
            return image.updateMask(image.select(CLOUD_SCORE_BAND).gte(threshold))

        # Earth Engine's documented recipe: link each scene to its Cloud Score+ image on system:index.
        return scenes.linkCollection(ee.ImageCollection(CLOUD_SCORE_PLUS), [CLOUD_SCORE_BAND]).map(mask_cs)
    return scenes
