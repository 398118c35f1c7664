"""DynamicVis model package: backbone, scans, checkpoint loading, preprocessing, embedder (no Beam, no EE)."""
from models.backbone import DynamicVisBackbone
from models.preprocess import preprocess_s2_rgb

__all__ = ["DynamicVisBackbone", "preprocess_s2_rgb"]
