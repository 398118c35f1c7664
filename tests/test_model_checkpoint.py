"""Checkpoint round trips through the production loader, and every refusal it must make."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, CheckpointRefusedError, load_backbone_weights, safe_torch_load
from models.config import ModelConfig
from models.embedder import load_backbone
from models.recipe import recipe_state_dict
from tests.fixtures.malicious import EvalViaGetattr, WritesMarker
from tests.fixtures.recipe import load_golden



def _assert_same_weights(state, expected):
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_official_format_round_trip_matches_golden(recipe_checkpoint_b64, model_cache):
    checkpoint = safe_torch_load(recipe_checkpoint_b64)
    assert torch.load.__module__  # the real torch.load; weights_only refuses such files:
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own unpickling error types
        torch.load(recipe_checkpoint_b64, weights_only=True)
    assert "HistoryBuffer" in repr(checkpoint["message_hub"]["log_scalars"]["train/loss"])

    config = ModelConfig(checkpoint=str(recipe_checkpoint_b64), img_size=64, device="cpu", scan="reference")
    model, info = load_backbone(config)
    assert (info.arch, info.repo) == ("b", None) and len(info.sha256) == 64
    assert not model.training
    golden = load_golden("dynamicvis_b_img64.npz")
    with torch.no_grad():
        stage3 = model(torch.from_numpy(golden["input"]))[-1]
    assert np.abs(stage3.numpy() - golden["stage3"]).max() <= 2.5e-5
    assert (model_cache / "converted" / f"{info.sha256}.safetensors").is_file()


def test_second_load_reads_the_converted_cache(recipe_checkpoint_b64, model_cache, monkeypatch):
    first, info = load_backbone_weights(str(recipe_checkpoint_b64))
    import models.checkpoint.converted as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "safe_torch_load", lambda *_: pytest.fail("cache not used"))
    second, info2 = load_backbone_weights(str(recipe_checkpoint_b64))
    assert info2 == info
    _assert_same_weights(second, first)


@pytest.mark.parametrize("layout", ["bare", "model", "module_prefix", "safetensors"])
def test_other_layouts_load(layout, tmp_path, model_cache):
    state = recipe_state_dict("b", 64)
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "bare":
        torch.save(state, path)
    elif layout == "model":
        torch.save({"model": state, "epoch": 3}, path)
    elif layout == "module_prefix":
        torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors.torch import save_file
        save_file(state, path)
    loaded, info = load_backbone_weights(str(path))
    assert info.arch == "b"
    _assert_same_weights(loaded, state)


def _hub_layout(cache, repo, file, data):
    """A Hugging Face hub cache (models--OWNER--NAME/{refs/main, snapshots/REV/FILE}) holding one file."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    model = cache / ("models--" + repo.replace("/", "--"))
    (model / "snapshots" / revision).mkdir(parents=True)
    (model / "refs").mkdir()
    (model / "refs" / "main").write_text(revision)
    (model / "snapshots" / revision / file).write_bytes(data)


# layout -> (variable set to tmp/cache_root, where below it the hub cache lies): the caches users already have.
CACHE_LAYOUTS = {
    "HF_HOME, hub layout": ("HF_HOME", "hub"),
    "HF_HOME as the adapter used it (cache_dir=HF_HOME)": ("HF_HOME", ""),
    "HUGGINGFACE_HUB_CACHE": ("HUGGINGFACE_HUB_CACHE", ""),
    "HF_HUB_CACHE": ("HF_HUB_CACHE", ""),
    "HUGGINGFACE_HOME as the adapter used it": ("HUGGINGFACE_HOME", ""),
    "HUGGINGFACE_HOME, hub layout": ("HUGGINGFACE_HOME", "hub"),
    "the hub's default (XDG_CACHE_HOME/huggingface/hub)": ("XDG_CACHE_HOME", "huggingface/hub"),
}


@pytest.mark.parametrize("layout", list(CACHE_LAYOUTS))
def test_checkpoint_found_in_the_caches_users_already_have(layout, recipe_checkpoint_b64, tmp_path, monkeypatch,
                                                           model_cache):
    import huggingface_hub

    variable, below = CACHE_LAYOUTS[layout]
    repo, file = "KyanChen/DynamicVis", "pretrain_dynamicvis_b_recipe_epoch_1.pth"
    root = tmp_path / "cache_root"
    _hub_layout(root / below if below else root, repo, file, recipe_checkpoint_b64.read_bytes())
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty_xdg"))
    monkeypatch.setenv(variable, str(root))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("a cached checkpoint was downloaded again"))
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_CKPT_FILE", file)
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_IMG", "64")
    config = ModelConfig.from_env(device="cpu", scan="reference")
    assert config.checkpoint == f"hf://{repo}/{file}"
    model, info = load_backbone(config)
    assert (info.repo, info.file, info.arch) == (repo, file, "b")
    assert model.pos_embed.shape == (1, 256, 96)


def test_offline_miss_names_every_cache_searched(tmp_path, monkeypatch, model_cache):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_CKPT_FILE", "not_in_cache.pth")
    with pytest.raises(CheckpointError, match="offline mode") as error:
        load_backbone(ModelConfig.from_env(device="cpu", scan="reference"))
    assert f"{tmp_path / 'hf_home' / 'hub'}, {tmp_path / 'hf_home'}," in str(error.value)



def _assert_refused_saying_why(path, *fragments):
    with pytest.raises(CheckpointRefusedError) as error:
        load_backbone_weights(str(path))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"refused {path}: its pickle "), message
    for fragment in (*fragments, "would have run code", "nothing ran", ".safetensors", "hf://KyanChen/DynamicVis/"):
        assert fragment in message, (fragment, message)
    return message


def test_malicious_pickle_is_refused_saying_why_and_runs_nothing(tmp_path, model_cache):
    marker = tmp_path / "pwned"
    state = {f"backbone.{k}": v for k, v in recipe_state_dict("b", 64).items()}
    state["backbone.pos_embed"] = WritesMarker(marker)          # a tensor slot holding code
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "meta": {"hook": WritesMarker(marker), "cfg": EvalViaGetattr(marker)}}, path)
    raw = tmp_path / "evil.pkl"                                   # a plain (non-zip) pickle as well
    raw.write_bytes(pickle.dumps(WritesMarker(marker)))

    message = _assert_refused_saying_why(path, f"{os.system.__module__}.system", "builtins.__import__",
                                         "calls what builtins.getattr(…, 'eval') returned")
    assert "names globals outside the allowlist" in message
    _assert_refused_saying_why(raw, f"{os.system.__module__}.system")
    assert not marker.exists(), "pickled code was executed"
    assert not any(model_cache.glob("converted/*")), "a refused checkpoint must not be cached"
    # The file is really malicious: a plain torch.load runs its code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_getattr_route_to_arbitrary_code_is_closed(tmp_path, model_cache):
    """getattr(__import__('os'), 'system')('touch marker') spelled in raw pickle opcodes: the route that
    allow-listing builtins.getattr would re-open. It is refused, naming the import and the call."""
    marker = tmp_path / "pwned"
    payload = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch "
               + str(marker).encode() + b"'\ntR.")
    path = tmp_path / "getattr.pth"
    path.write_bytes(payload)
    _assert_refused_saying_why(path, "builtins.__import__", "calls what builtins.getattr(…, 'system') returned")
    assert not marker.exists(), "pickled code was executed"
    # The same bytes do run code under plain pickle: the test would catch a loader that executed them.
    pickle.loads(payload)
    assert marker.exists()


def test_code_built_only_from_allowed_globals_is_refused(tmp_path, model_cache):
    """eval reached from HistoryBuffer and getattr alone (both named by official files): the pickle has to
    call what getattr returned, and that is what gives it away."""
    marker = tmp_path / "pwned"

    def getattr_of(obj: bytes, name: bytes) -> bytes:
        return b"cbuiltins\ngetattr\n(" + obj + b"S'" + name + b"'\ntR"

    init = getattr_of(b"cmmengine.logging.history_buffer\nHistoryBuffer\n", b"__init__")
    builtins_dict = getattr_of(getattr_of(init, b"__globals__"), b"get") + b"(S'__builtins__'\ntR"
    evaluate = getattr_of(builtins_dict, b"get") + b"(S'eval'\ntR"
    payload = evaluate + b"(S\"open('" + str(marker).encode() + b"', 'w').close()\"\ntR."
    path = tmp_path / "allowed_globals.pth"
    path.write_bytes(payload)
    message = _assert_refused_saying_why(path, "its pickle calls what builtins.getattr(…, 'get')", "('eval')")
    assert "globals outside" not in message
    assert not marker.exists(), "pickled code was executed"
    pickle.loads(payload)
    assert marker.exists()


def test_truncated_file_is_refused(recipe_checkpoint_b64, tmp_path, model_cache):
    path = tmp_path / "truncated.pth"
    data = recipe_checkpoint_b64.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_backbone_weights(str(path))


@pytest.mark.parametrize("content", [b"<html>404 Not Found</html>", b""])
def test_foreign_file_is_refused(content, tmp_path, model_cache):
    path = tmp_path / "foreign.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="could not read"):
        load_backbone_weights(str(path))


def test_non_dynamicvis_checkpoint_is_refused(tmp_path, model_cache):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 3, 3, 3), "fc.bias": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="no DynamicVis backbone weights.*conv1.weight"):
        load_backbone_weights(str(path))


def test_wrong_arch_is_named(recipe_checkpoint_b64, model_cache):
    with pytest.raises(CheckpointError, match=r"does not match DynamicVis arch 'l'.*look like arch 'b'"):
        load_backbone_weights(str(recipe_checkpoint_b64), arch="l")


def test_large_file_name_selects_large_and_reports_mismatch(recipe_checkpoint_b64, tmp_path, model_cache):
    path = tmp_path / "pretrain_dynamicvis_l_epoch_1.pth"
    path.write_bytes(recipe_checkpoint_b64.read_bytes())
    with pytest.raises(CheckpointError, match="arch 'l'"):
        load_backbone_weights(str(path))


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, model_cache):
    state = recipe_state_dict("b", 64)
    del state["layers.3.1.3.spatial_gate.weight"]
    state["layers.0.1.0.spatial_mamba_mixer.gate_layer.0.weight"] = torch.zeros(2, 192)
    state["layers.2.2.weight"] = torch.zeros(385)
    path = tmp_path / "variant.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(CheckpointError) as error:
        load_backbone_weights(str(path), arch="b")
    message = str(error.value)
    assert "1 missing keys: layers.3.1.3.spatial_gate.weight" in message
    assert "1 unexpected keys: layers.0.1.0.spatial_mamba_mixer.gate_layer.0.weight" in message
    assert "layers.2.2.weight: checkpoint [385] vs model [384]" in message
    assert not any((model_cache / "converted").glob("*")), "a bad checkpoint must not be cached"


def test_missing_local_file_and_bad_uris(tmp_path, model_cache):
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(str(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match="hf://OWNER/REPO/FILE"):
        load_backbone_weights("hf://just-a-repo")
    with pytest.raises(CheckpointError, match="gs://BUCKET/OBJECT"):
        load_backbone_weights("gs://bucket-only")
