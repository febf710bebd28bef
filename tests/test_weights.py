"""Weights: own safetensors format, import of official layouts, strict checks, hub cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ramen_core.errors import WeightsError
from ramen_core.model import ModalityInput, RamenConfig, RamenEncoder, RamenMAE
from ramen_core.model.reference import bands_from_reference
from ramen_core.weights import (
    DEFAULT_WEIGHTS,
    LoadedWeights,
    load_encoder,
    load_mae,
    load_weights,
    resolve_weights,
    save_weights,
    sha256_file,
)
from ramen_core.weights.hub import parse_hub_uri
from ramen_core.weights.infer import default_decoder_num_heads, default_num_heads, infer_config
from ramen_core.weights.model_keys import expected_shapes

PARITY_DIR = Path(__file__).parent / "data" / "reference_parity"
# The fixture's head counts (4 and 4) cannot be read from tensor shapes.
FIXTURE_HEADS = dict(num_heads=4, decoder_num_heads=4)
# A time series with radar and elevation, so the L-TAE BatchNorm statistics and every
# projector take part.
PARITY_CASE = "c4_s2T3_s1T2_dem_20m"


@pytest.fixture(scope="module")
def parity_inputs() -> tuple[list[ModalityInput], float, torch.Tensor]:
    settings = json.loads((PARITY_DIR / "config.json").read_text())
    case = next(c for c in settings["cases"] if c["name"] == PARITY_CASE)
    data = settings["data"]
    with safe_open(PARITY_DIR / "cases.safetensors", "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(f"{PARITY_CASE}/")}
    modalities = [
        ModalityInput(
            name=name,
            data=tensors[f"{PARITY_CASE}/input/{name}"],
            bands=bands_from_reference(data["wavelengths"][case["dataset"]][name]),
            gsd=float(data["modalities_res"][case["dataset"]][name]),
            dates=tensors.get(f"{PARITY_CASE}/input/{name}_dates"),
        )
        for name in case["modalities_keep"]
    ]
    return modalities, float(case["effective_res"]), tensors[f"{PARITY_CASE}/expected/tokens"]


def _tokens(encoder: RamenEncoder, inputs) -> torch.Tensor:
    modalities, target_gsd, _ = inputs
    with torch.no_grad():
        return encoder(modalities, target_gsd).tokens


# ---------------------------------------------------------------- official key layout
def test_base_config_has_every_official_key():
    listing = json.loads((PARITY_DIR / "official_base_keys.json").read_text())
    prefix = "model."
    official = {entry["key"][len(prefix):]: tuple(entry["shape"]) for entry in listing["keys"]}
    assert all(entry["key"].startswith(prefix) for entry in listing["keys"])

    ours = expected_shapes(RamenConfig.base())  # built on the meta device: no memory
    missing = sorted(set(official) - set(ours))
    extra = sorted(set(ours) - set(official))
    assert not missing, f"official keys the model lacks: {missing}"
    assert not extra, f"model keys absent from the official checkpoint: {extra}"
    mismatched = [key for key in official if official[key] != ours[key]]
    assert not mismatched, f"shape mismatches: {mismatched}"


def test_base_config_inferred_from_official_shapes():
    listing = json.loads((PARITY_DIR / "official_base_keys.json").read_text())
    state = {
        entry["key"][len("model."):]: torch.empty(entry["shape"], device="meta") for entry in listing["keys"]
    }
    assert infer_config(state) == RamenConfig.base()


def test_parameter_count_matches_official():
    listing = json.loads((PARITY_DIR / "official_base_keys.json").read_text())
    with torch.device("meta"):
        model = RamenMAE(RamenConfig.base())
    assert sum(p.numel() for p in model.encoder.parameters()) == listing["num_parameters"]["encoder"]
    assert sum(p.numel() for p in model.decoder.parameters()) == listing["num_parameters"]["decoder"]

    state = {entry["key"][len("model."):]: torch.empty(entry["shape"], device="meta") for entry in listing["keys"]}
    loaded = LoadedWeights(state, RamenConfig.base(), {}, "", PARITY_DIR, parts=["encoder", "decoder"])
    assert loaded.num_parameters("encoder") == listing["num_parameters"]["encoder"]
    assert loaded.num_parameters("decoder") == listing["num_parameters"]["decoder"]


def test_default_head_counts():
    assert default_num_heads(768) == 12
    assert default_num_heads(384) == 6
    assert default_num_heads(64) == 1
    assert default_decoder_num_heads(512) == 16
    assert default_decoder_num_heads(32) == 1
    assert default_num_heads(96) == 1  # 96 // 64 = 1
    assert default_decoder_num_heads(96) == 3


# ---------------------------------------------------------------- own format
def test_round_trip_tiny(tmp_path):
    torch.manual_seed(0)
    config = RamenConfig.tiny(radar_projector=False)
    model = RamenMAE(config)
    target = tmp_path / "sub" / "tiny.safetensors"
    save_weights(target, model, config, {"sensors": json.dumps(["sentinel-2-l2a"])})

    loaded = load_weights(target)
    assert isinstance(loaded, LoadedWeights)
    assert loaded.config == config
    assert loaded.metadata == {"sensors": '["sentinel-2-l2a"]'}
    assert loaded.source_format == "ramen"
    assert not loaded.config_inferred
    assert loaded.parts == ["encoder", "decoder"]
    assert loaded.sha256 == sha256_file(target)
    assert loaded.path == target
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict[key], value), key
    assert list(tmp_path.joinpath("sub").iterdir()) == [target]  # no temporary file left


def test_header_holds_config_and_format(tmp_path):
    config = RamenConfig.tiny()
    target = save_weights(tmp_path / "w.safetensors", RamenEncoder(config), config)
    with safe_open(target, "pt") as handle:
        header = handle.metadata()
        keys = list(handle.keys())
    assert header["format"] == "ramen"
    assert header["format_version"] == "1"
    assert RamenConfig.from_json(header["ramen_config"]) == config
    assert all(key.startswith("encoder.") for key in keys)


def test_encoder_only_file_loads_encoder(tmp_path, parity_inputs):
    reference = load_encoder(PARITY_DIR / "weights.safetensors", **FIXTURE_HEADS)
    target = save_weights(tmp_path / "enc.safetensors", reference, reference.config)
    encoder = load_encoder(target)
    assert not encoder.training
    assert torch.equal(_tokens(encoder, parity_inputs), _tokens(reference, parity_inputs))
    with pytest.raises(WeightsError, match="encoder only"):
        load_mae(target)
    mae = load_mae(target, allow_missing_decoder=True)
    assert torch.equal(mae.encoder.cls_token, reference.cls_token)


def test_save_rejects_config_mismatch(tmp_path):
    model = RamenMAE(RamenConfig.tiny())
    with pytest.raises(WeightsError, match="shape mismatches") as error:
        save_weights(tmp_path / "w.safetensors", model, RamenConfig.tiny(embed_dim=128))
    assert "encoder.blocks.0.attn.proj.bias (file (64,), model (128,))" in str(error.value)
    assert not (tmp_path / "w.safetensors").exists()


def test_save_rejects_bad_metadata(tmp_path):
    config = RamenConfig.tiny()
    model = RamenEncoder(config)
    with pytest.raises(WeightsError, match="reserved"):
        save_weights(tmp_path / "w.safetensors", model, config, {"ramen_config": "{}"})
    with pytest.raises(WeightsError, match="must be strings"):
        save_weights(tmp_path / "w.safetensors", model, config, {"classes": ["a", "b"]})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_head_keys_round_trip(tmp_path):
    config = RamenConfig.tiny()
    state = {f"encoder.{k}": v for k, v in RamenEncoder(config).state_dict().items()}
    state["head.classifier.weight"] = torch.ones(3, 64)
    target = save_weights(tmp_path / "seg.safetensors", state, config, {"classes": '["a", "b", "c"]'})
    loaded = load_weights(target)
    assert loaded.parts == ["encoder", "head"]
    assert torch.equal(loaded.part("head")["classifier.weight"], torch.ones(3, 64))


# ---------------------------------------------------------------- import of official layouts
def test_official_layouts_give_same_tokens(tmp_path, parity_inputs):
    _, _, expected = parity_inputs
    unprefixed = {
        key[len("encoder."):]: value
        for key, value in load_file(PARITY_DIR / "weights.safetensors").items()
        if key.startswith("encoder.")
    }
    torch.save({"state_dict": unprefixed}, tmp_path / "encoder_only.ckpt")
    torch.save(unprefixed, tmp_path / "bare_state_dict.pt")

    sources = {
        "safetensors": PARITY_DIR / "weights.safetensors",
        "lightning": PARITY_DIR / "lightning_style.ckpt",
        "state_dict": tmp_path / "encoder_only.ckpt",
        "bare": tmp_path / "bare_state_dict.pt",
    }
    tokens = {}
    for name, source in sources.items():
        loaded = load_weights(source, **FIXTURE_HEADS)
        assert loaded.config_inferred, name
        encoder = load_encoder(source, **FIXTURE_HEADS)
        assert encoder.ltae.inconv[1].num_batches_tracked.item() == 1234, name  # buffers are loaded
        tokens[name] = _tokens(encoder, parity_inputs)

    assert torch.allclose(tokens["safetensors"], expected, atol=2e-5)
    for name in ("lightning", "state_dict", "bare"):
        assert torch.equal(tokens[name], tokens["safetensors"]), name


def test_lightning_import_keeps_decoder():
    loaded = load_weights(PARITY_DIR / "lightning_style.ckpt", **FIXTURE_HEADS)
    assert loaded.source_format == "lightning"
    assert loaded.parts == ["encoder", "decoder"]
    assert loaded.config.decoder_embed_dim == 32
    assert loaded.config.decoder_depth == 1
    assert loaded.metadata == {}
    reference = load_file(PARITY_DIR / "weights.safetensors")
    assert set(loaded.state_dict) == set(reference)


def test_pickled_objects_need_trust(tmp_path):
    lightning = torch.load(PARITY_DIR / "lightning_style.ckpt", weights_only=True)
    lightning["hyper_parameters"] = argparse.Namespace(lr=1e-4, mask_ratio=0.75)
    source = tmp_path / "with_hparams.ckpt"
    torch.save(lightning, source)

    with pytest.raises(WeightsError, match="--trust-checkpoint") as error:
        load_weights(source, **FIXTURE_HEADS)
    assert "argparse.Namespace" in str(error.value)
    loaded = load_weights(source, trust_checkpoint=True, **FIXTURE_HEADS)
    assert loaded.parts == ["encoder", "decoder"]


def test_missing_key_is_listed(tmp_path):
    state = load_file(PARITY_DIR / "weights.safetensors")
    del state["encoder.ltae.mlp.1.running_var"]
    del state["encoder.blocks.1.attn.proj.bias"]
    save_file(state, tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError) as error:
        load_weights(tmp_path / "missing.safetensors", **FIXTURE_HEADS)
    assert "missing encoder keys" in str(error.value)
    assert "encoder.ltae.mlp.1.running_var" in str(error.value)
    assert "encoder.blocks.1.attn.proj.bias" in str(error.value)


def test_unexpected_key_is_listed(tmp_path):
    state = load_file(PARITY_DIR / "weights.safetensors")
    state["encoder.blocks.0.attn.q_norm.weight"] = torch.ones(16)
    state["decoder.extra_token"] = torch.zeros(1, 1, 32)
    save_file(state, tmp_path / "extra.safetensors")
    with pytest.raises(WeightsError) as error:
        load_weights(tmp_path / "extra.safetensors", **FIXTURE_HEADS)
    message = str(error.value)
    assert "unexpected encoder keys: encoder.blocks.0.attn.q_norm.weight" in message
    assert "unexpected decoder keys: decoder.extra_token" in message
    assert ": the tensors do not match the model config" in message


def test_head_count_guess_and_override():
    # Head counts do not change shapes, so a wrong guess loads but computes other features.
    loaded = load_weights(PARITY_DIR / "weights.safetensors")
    assert loaded.config.num_heads == default_num_heads(64)
    explicit = load_weights(PARITY_DIR / "weights.safetensors", config=RamenConfig.tiny())
    assert explicit.config == RamenConfig.tiny()


def test_mixed_prefixes_rejected(tmp_path):
    state = load_file(PARITY_DIR / "weights.safetensors")
    state["cls_token"] = state["encoder.cls_token"]
    torch.save(state, tmp_path / "mixed.pt")
    with pytest.raises(WeightsError, match="mixes keys") as error:
        load_weights(tmp_path / "mixed.pt")
    assert "cls_token" in str(error.value)


# ---------------------------------------------------------------- broken files
@pytest.mark.parametrize("name", ["lightning_style.ckpt", "weights.safetensors"])
def test_truncated_file_rejected(tmp_path, name):
    data = (PARITY_DIR / name).read_bytes()
    for size in (len(data) // 2, len(data) - 100, 20):
        target = tmp_path / f"truncated_{size}_{name}"
        target.write_bytes(data[:size])
        with pytest.raises(WeightsError, match="corrupt|truncated"):
            load_weights(target, **FIXTURE_HEADS)


def test_empty_and_foreign_files_rejected(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        load_weights(tmp_path / "empty.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint at all")
    with pytest.raises(WeightsError, match="neither safetensors nor a PyTorch checkpoint"):
        load_weights(tmp_path / "notes.ckpt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a dict of tensors"):
        load_weights(tmp_path / "list.pt")


def test_missing_local_file(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_weights(tmp_path / "nope.ckpt")


# ---------------------------------------------------------------- hub
def test_hub_uri_parsing():
    hub_file = parse_hub_uri(DEFAULT_WEIGHTS)
    assert hub_file.repo_id == "nicolashoudre/RAMEN"
    assert hub_file.filename == "ramen_base_99.ckpt"
    assert hub_file.revision is None
    nested = parse_hub_uri("hf://owner/repo@v1.0/sub/dir/file.safetensors")
    assert (nested.repo_id, nested.revision, nested.filename) == ("owner/repo", "v1.0", "sub/dir/file.safetensors")
    assert nested.uri == "hf://owner/repo@v1.0/sub/dir/file.safetensors"
    with pytest.raises(WeightsError, match="invalid hub URI"):
        parse_hub_uri("hf://owner/file.ckpt")


def test_hub_offline_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="local") as error:
        resolve_weights(DEFAULT_WEIGHTS, cache_dir=tmp_path / "cache")
    assert "HF_HUB_OFFLINE" in str(error.value)


def test_hub_offline_cache_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAMEN_CACHE_DIR", str(tmp_path / "env-cache"))
    with pytest.raises(WeightsError) as error:
        load_encoder(DEFAULT_WEIGHTS)
    assert str(tmp_path / "env-cache") in str(error.value)


# ---------------------------------------------------------------- command line
def _cli():
    from typer.testing import CliRunner

    from ramen_cli.app import _register_commands, app

    _register_commands()
    return CliRunner(), app


def test_cli_import_and_info(tmp_path, parity_inputs):
    runner, app = _cli()
    target = tmp_path / "imported.safetensors"
    result = runner.invoke(
        app,
        ["weights", "import", str(PARITY_DIR / "lightning_style.ckpt"), "-o", str(target),
         "--num-heads", "4", "--decoder-num-heads", "4", "--metadata", "note=fixture"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output

    loaded = load_weights(target)
    assert loaded.config == RamenConfig.tiny()
    assert loaded.metadata["source"] == "lightning_style.ckpt"
    assert loaded.metadata["source_sha256"] == sha256_file(PARITY_DIR / "lightning_style.ckpt")
    assert loaded.metadata["source_format"] == "lightning"
    assert loaded.metadata["note"] == "fixture"
    reference = load_encoder(PARITY_DIR / "weights.safetensors", **FIXTURE_HEADS)
    assert torch.equal(_tokens(load_encoder(target), parity_inputs), _tokens(reference, parity_inputs))

    result = runner.invoke(app, ["weights", "info", str(target), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["sha256"] == sha256_file(target)
    assert info["parts"] == ["encoder", "decoder"]
    assert info["config"]["num_heads"] == 4
    assert info["config_inferred"] is False
    assert info["parameters"]["encoder"] + info["parameters"]["decoder"] == loaded.num_parameters()

    result = runner.invoke(app, ["weights", "info", str(target)])
    assert result.exit_code == 0, result.output
    assert sha256_file(target) in result.output
    assert "encoder, decoder" in result.output


def test_cli_import_needs_trust(tmp_path):
    runner, app = _cli()
    lightning = torch.load(PARITY_DIR / "lightning_style.ckpt", weights_only=True)
    lightning["hyper_parameters"] = argparse.Namespace(lr=1e-4)
    source = tmp_path / "with_hparams.ckpt"
    torch.save(lightning, source)
    target = tmp_path / "out.safetensors"

    result = runner.invoke(app, ["weights", "import", str(source), "-o", str(target)])
    assert result.exit_code == 1
    assert "--trust-checkpoint" in result.output
    assert "Traceback" not in result.output
    assert not target.exists()

    result = runner.invoke(app, ["weights", "import", str(source), "-o", str(target), "--trust-checkpoint"])
    assert result.exit_code == 0, result.output
    assert load_weights(target).parts == ["encoder", "decoder"]


def test_cli_info_reports_bad_files(tmp_path):
    runner, app = _cli()
    data = (PARITY_DIR / "lightning_style.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 3])
    result = runner.invoke(app, ["weights", "info", str(tmp_path / "cut.ckpt")])
    assert result.exit_code == 1
    assert "corrupt or truncated" in result.output
    assert "Traceback" not in result.output


def test_cli_download_offline(tmp_path, monkeypatch):
    runner, app = _cli()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["weights", "download", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1
    assert "local" in result.output
    result = runner.invoke(app, ["weights", "download", "weights.ckpt"])
    assert result.exit_code == 1
    assert "not a hub URI" in result.output


def test_hub_offline_uses_cache(tmp_path, monkeypatch, parity_inputs):
    # The layout that huggingface_hub writes: refs/main names the snapshot folder.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0" * 40
    repo_cache = tmp_path / "cache" / "models--ramen-test--tiny"
    snapshot = repo_cache / "snapshots" / commit / "ckpt"
    snapshot.mkdir(parents=True)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    (snapshot / "model.ckpt").write_bytes((PARITY_DIR / "lightning_style.ckpt").read_bytes())

    uri = "hf://ramen-test/tiny/ckpt/model.ckpt"
    assert resolve_weights(uri, cache_dir=tmp_path / "cache") == snapshot / "model.ckpt"
    monkeypatch.setenv("RAMEN_CACHE_DIR", str(tmp_path / "cache"))
    encoder = load_encoder(uri, **FIXTURE_HEADS)
    _, _, expected = parity_inputs
    assert torch.allclose(_tokens(encoder, parity_inputs), expected, atol=2e-5)


def test_trusted_load_with_missing_module(tmp_path):
    # A pickle that names a module which is not installed, as a checkpoint written with
    # another environment's hyper-parameter classes would.
    import pickle
    import sys
    import types

    module = types.ModuleType("ramen_missing_hparams")

    class Settings:
        pass

    Settings.__module__ = module.__name__
    Settings.__qualname__ = "Settings"
    module.Settings = Settings
    sys.modules[module.__name__] = module
    try:
        lightning = torch.load(PARITY_DIR / "lightning_style.ckpt", weights_only=True)
        lightning["hyper_parameters"] = Settings()
        torch.save(lightning, tmp_path / "foreign.ckpt", pickle_module=pickle)
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(WeightsError, match="not installed"):
        load_weights(tmp_path / "foreign.ckpt", trust_checkpoint=True, **FIXTURE_HEADS)
    with pytest.raises(WeightsError, match="--trust-checkpoint"):
        load_weights(tmp_path / "foreign.ckpt", **FIXTURE_HEADS)


def test_stored_config_head_override(tmp_path):
    config = RamenConfig.tiny()
    target = save_weights(tmp_path / "w.safetensors", RamenEncoder(config), config)
    assert load_weights(target).config.num_heads == 4
    assert load_weights(target, num_heads=2).config.num_heads == 2
    assert load_weights(target, num_heads=2).config.decoder_num_heads == 4
