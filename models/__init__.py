"""DynamicVis model package: backbone, scans, checkpoint loading, preprocessing, embedder (no Beam, no EE)."""
from models import recipe
from models.backbone import DynamicVisBackbone
from models.checkpoint import CheckpointError, CheckpointInfo, CheckpointRefusedError, load_backbone_weights
from models.config import ModelConfig
from models.embedder import DynamicVisEmbedder, load_backbone
from models.preprocess import preprocess_s2_rgb

__all__ = ["CheckpointError", "CheckpointInfo", "CheckpointRefusedError", "DynamicVisBackbone", "DynamicVisEmbedder",
           "ModelConfig", "load_backbone", "load_backbone_weights", "preprocess_s2_rgb", "recipe"]
