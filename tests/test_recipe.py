"""Pre-training recipes: the paper's setup, typed validation, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ramen_core.bands import BandSpec
from ramen_core.errors import ConfigError
from ramen_core.training.recipe import GSDRange, load_recipe, recipe_from_dict
from ramen_core.typed_toml import parse_override

REPO = Path(__file__).resolve().parent.parent
MAE_RECIPE = REPO / "recipes" / "mae.toml"
TINY_RECIPE = REPO / "recipes" / "tiny_mae.toml"
OFFICIAL = REPO / "tests" / "data" / "reference_parity" / "official_base_keys.json"


def _minimal(**changes: object) -> dict:
    data: dict = {
        "model": {"size": "tiny"},
        "datasets": {"a": {"path": "chips/a", "modalities": ["s2", "s1"], "target_gsd": [10.0, 20.0], "batch_size": 4}},
    }
    data.update(changes)
    return data


def _band(token: object) -> BandSpec:
    return BandSpec.parse(token)  # type: ignore[arg-type]


def test_mae_recipe_matches_official_config() -> None:
    used = json.loads(OFFICIAL.read_text())["config_used"]
    recipe = load_recipe(MAE_RECIPE)
    data = used["data"]

    assert list(recipe.datasets) == data["datasets"]
    for name, dataset in recipe.datasets.items():
        assert dataset.modalities == data["modalities"][name]
        assert dataset.native_gsd == data["modalities_res"][name]
        assert dataset.chip_size == data["modalities_input_size"][name]
        assert dataset.gsd_values() == data["all_res"][name]
        for modality, tokens in data["wavelengths"][name].items():
            assert [_band(t) for t in dataset.bands[modality]] == [_band(t) for t in tokens]
        assert dataset.weight == 1.0


def test_mae_recipe_model_and_optimiser() -> None:
    used = json.loads(OFFICIAL.read_text())["config_used"]
    recipe = load_recipe(MAE_RECIPE)
    config = recipe.model.config()

    assert config.embed_dim == used["encoder"]["embed_dim"]
    assert config.depth == used["encoder"]["depth"]
    assert config.num_heads == used["encoder"]["num_heads"]
    assert config.decoder_embed_dim == used["decoder"]["decoder_embed_dim"]
    assert config.decoder_depth == used["decoder"]["depth"]
    assert config.decoder_num_heads == used["decoder"]["num_heads"]
    assert config.num_experts == 4
    assert recipe.mae.mask_ratio == used["mask_ratio"] == 0.75
    assert recipe.optim.name == "adamw"
    assert recipe.optim.lr == 1.5e-4
    assert recipe.schedule.warmup_epochs == 20
    assert recipe.schedule.epochs == 100
    assert {name: d.batch_size for name, d in recipe.datasets.items()} == {"flairhub": 4, "mmearth": 32, "worldstrat": 2}


def test_tiny_recipe_loads() -> None:
    recipe = load_recipe(TINY_RECIPE)
    assert recipe.model.size == "tiny"
    assert set(recipe.datasets) == {"sen1floods11", "bigearthnet", "luxembourg", "s2_timeseries"}
    assert recipe.datasets["bigearthnet"].target_gsd == GSDRange(20.0, 100.0, 20.0)
    assert recipe.datasets["bigearthnet"].gsd_values() == [20.0, 40.0, 60.0, 80.0, 100.0]
    # Dataset paths are relative to the recipe file.
    assert recipe.datasets["sen1floods11"].path == REPO / "chips" / "sen1floods11"


def test_unknown_key_named_by_path() -> None:
    with pytest.raises(ConfigError, match=r"'optim\.learning_rate'"):
        recipe_from_dict(_minimal(optim={"learning_rate": 1e-4}))
    with pytest.raises(ConfigError, match=r"'datasets\.a\.batchsize'"):
        data = _minimal()
        data["datasets"]["a"]["batchsize"] = 3
        recipe_from_dict(data)
    with pytest.raises(ConfigError, match=r"'model\.width'"):
        recipe_from_dict(_minimal(model={"size": "tiny", "width": 3}))
    with pytest.raises(ConfigError, match=r"'colour'; keys allowed in the top level: ") as error:
        recipe_from_dict(_minimal(colour="red", checkpoint={"dir": "c"}, log={"dir": "l"}))
    allowed = str(error.value).split(": ")[-1].split(", ")
    assert {"model", "checkpoint", "log", "datasets", "optim"} <= set(allowed)


def test_wrong_type_named_by_path() -> None:
    with pytest.raises(ConfigError, match=r"'optim\.lr': expected a number, got 'fast'"):
        recipe_from_dict(_minimal(optim={"lr": "fast"}))
    with pytest.raises(ConfigError, match=r"'train\.seed': expected an integer"):
        recipe_from_dict(_minimal(train={"seed": 1.5}))
    with pytest.raises(ConfigError, match=r"'train\.precision': expected one of 'fp32', 'bf16'"):
        recipe_from_dict(_minimal(train={"precision": "fp16"}))
    with pytest.raises(ConfigError, match=r"'model\.num_experts': expected an integer"):
        recipe_from_dict(_minimal(model={"size": "tiny", "num_experts": "4"}))
    data = _minimal()
    data["datasets"]["a"]["target_gsd"] = [10.0, "twenty"]
    with pytest.raises(ConfigError, match=r"'datasets\.a\.target_gsd\[1\]'"):
        recipe_from_dict(data)


def test_invalid_values_rejected() -> None:
    with pytest.raises(ConfigError, match="mask_ratio"):
        recipe_from_dict(_minimal(mae={"mask_ratio": 1.0}))
    with pytest.raises(ConfigError, match="mask_ratio"):
        recipe_from_dict(_minimal(mae={"mask_ratio": 0.0}))  # nothing masked: a NaN loss
    with pytest.raises(ConfigError, match="warmup_epochs"):
        recipe_from_dict(_minimal(schedule={"epochs": 5, "warmup_epochs": 6}))
    data = _minimal()
    data["datasets"]["a"]["native_gsd"] = {"dem": 30.0}
    with pytest.raises(ConfigError, match=r"datasets\.a\.native_gsd\.dem.*not in datasets\.a\.modalities"):
        recipe_from_dict(data)
    data = _minimal()
    data["datasets"]["a"]["target_gsd"] = {"min": 20.0, "max": 10.0}
    with pytest.raises(ConfigError, match="min <= max"):
        recipe_from_dict(data)
    with pytest.raises(ConfigError, match="add at least one"):
        recipe_from_dict({"model": {"size": "tiny"}})


def test_overrides_are_typed(tmp_path: Path) -> None:
    recipe = load_recipe(
        TINY_RECIPE,
        [
            "optim.lr=1e-4",
            "train.max_steps=7",
            "log.plot=false",
            "optim.betas=[0.9, 0.95]",
            "datasets.luxembourg.target_gsd={min = 1000, max = 3000}",
            f"datasets.luxembourg.path={tmp_path / 'lux'}",
            "checkpoint.dir=out/ckpt",
        ],
    )
    assert recipe.optim.lr == 1e-4
    assert recipe.train.max_steps == 7
    assert recipe.log.plot is False
    assert recipe.optim.betas == [0.9, 0.95]
    assert recipe.datasets["luxembourg"].target_gsd == GSDRange(1000.0, 3000.0)
    assert recipe.datasets["luxembourg"].gsd_values() is None
    assert recipe.datasets["luxembourg"].path == tmp_path / "lux"
    assert recipe.checkpoint.dir == Path("out/ckpt")


def test_override_wrong_type_named() -> None:
    with pytest.raises(ConfigError, match=r"'optim\.grad_accumulation': expected an integer, got 'two'"):
        load_recipe(TINY_RECIPE, ["optim.grad_accumulation=two"])
    with pytest.raises(ConfigError, match=r"unknown recipe key 'optim\.momentum'"):
        load_recipe(TINY_RECIPE, ["optim.momentum=0.9"])


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="empty part"):
        parse_override("optim..lr=1")
    assert parse_override("a.b=/some/path") == (["a", "b"], "/some/path")


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(broken)


def test_recipe_round_trips_to_json() -> None:
    recipe = load_recipe(TINY_RECIPE)
    data = json.loads(recipe.to_json())
    assert data["datasets"]["bigearthnet"]["target_gsd"] == {"min": 20.0, "max": 100.0, "step": 20.0}
    assert data["model"]["size"] == "tiny"
