"""gs:// checkpoints through the production loader, against a real GCS emulator (google-cloud-storage client)."""
import pytest

from models.checkpoint import CheckpointError, load_backbone_weights
from models.recipe import recipe_state_dict
from tests.fixtures.storage import gcs_client


def _upload(gcs_emulator, gs_prefix: str, name: str, path) -> str:
    bucket, prefix = gs_prefix[len("gs://"):].split("/", 1)
    gcs_client(gcs_emulator.url).bucket(bucket).blob(f"{prefix}/{name}").upload_from_filename(str(path))
    return f"{gs_prefix}/{name}"


def test_gs_checkpoint_loads_strictly_and_is_cached(gcs_emulator, gcs_bucket, recipe_checkpoint_b64, model_cache):
    uri = _upload(gcs_emulator, gcs_bucket, "dynamicvis_b_recipe.pth", recipe_checkpoint_b64)
    state, info = load_backbone_weights(uri)
    expected = recipe_state_dict("b", 64)
    assert set(state) == set(expected)
    assert all(state[key].equal(expected[key]) for key in expected)
    assert info.arch == "b" and len(info.sha256) == 64

    again, info_again = load_backbone_weights(uri)   # second load: the converted safetensors cache
    assert info_again.sha256 == info.sha256 and again["pos_embed"].equal(state["pos_embed"])


def test_missing_gs_object_is_a_clear_error(gcs_emulator, gcs_bucket, model_cache):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone_weights(f"{gcs_bucket}/no_such_checkpoint.pth")
