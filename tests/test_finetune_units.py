"""Fast checks of the fine-tuning pieces: metrics, recipes and model files."""

import numpy as np
import pytest
import torch

from ramen_core.errors import ConfigError, WeightsError
from ramen_core.heads.bundle import (
    ClassSpec,
    HeadConfig,
    ModalitySpec,
    SegmentationModel,
    build_segmenter,
    load_segmentation_model,
    save_segmentation_model,
)
from ramen_core.model import RamenConfig, RamenEncoder
from ramen_core.training.finetune_recipe import finetune_recipe_from_dict
from ramen_core.training.metrics import confusion_matrix, scores_from_confusion
from ramen_core.weights import save_weights


# ---------------------------------------------------------------------------------- metrics
def test_confusion_skips_ignored_pixels():
    target = torch.tensor([[0, 1, -1], [2, 2, 1]])
    predicted = torch.tensor([[0, 2, 1], [2, 0, 1]])
    matrix = confusion_matrix(predicted, target, num_classes=3, ignore=-1)
    assert matrix.sum() == 5
    assert matrix[1, 2] == 1
    assert matrix[2, 0] == 1


def test_miou_averages_present_classes_only():
    # Class 2 never occurs in the labels but is predicted once: it is left out of the mean.
    confusion = np.array([[8, 0, 2], [0, 5, 0], [0, 0, 0]])
    scores = scores_from_confusion(confusion)
    assert scores.present.tolist() == [True, True, False]
    assert scores.iou[0] == pytest.approx(0.8)
    assert scores.iou[2] == 0.0
    assert scores.miou == pytest.approx((0.8 + 1.0) / 2)
    assert scores.overall_accuracy == pytest.approx(13 / 15)
    assert scores.majority_miou == pytest.approx((10 / 15) / 2)


# ---------------------------------------------------------------------------------- recipes
def _recipe_table(**changes):
    table = {
        "task": {"classes": ["a", "b"]},
        "encoder": {"size": "tiny"},
        "data": {
            "gsd": 20.0,
            "inputs": {"s2": {"sensor": "s2", "bands": ["B02", "B03"]}},
            "train": {"images": {"s2": "train/*_s2.tif"}, "label": "train/*_label.tif"},
            "val": {"images": {"s2": "val/*_s2.tif"}, "label": "val/*_label.tif"},
        },
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        table.setdefault(section, {})[name] = value
    return table


def test_recipe_resolves_patterns(tmp_path):
    recipe = finetune_recipe_from_dict(_recipe_table(), base_dir=tmp_path)
    assert recipe.data.train.images["s2"] == str(tmp_path / "train" / "*_s2.tif")
    assert recipe.task.class_spec().num_classes == 2


def test_recipe_unknown_key_named():
    with pytest.raises(ConfigError, match="head.colour"):
        finetune_recipe_from_dict(_recipe_table(head__colour=1))


def test_recipe_batchnorm_needs_two_chips():
    with pytest.raises(ConfigError, match="batches of 2 or more"):
        finetune_recipe_from_dict(_recipe_table(data__batch_size=1))


def test_recipe_missing_input_pattern():
    table = _recipe_table()
    table["data"]["inputs"]["s1"] = {"sensor": "s1", "orbit": "asc"}
    with pytest.raises(ConfigError, match="missing \\['s1'\\]"):
        finetune_recipe_from_dict(table)


def test_recipe_reference_needs_weights():
    with pytest.raises(ConfigError, match="include_in_model"):
        finetune_recipe_from_dict(_recipe_table(encoder__include_in_model=False))


def test_class_values_and_ignore_index_disjoint():
    with pytest.raises(ConfigError, match="ignore_index 1"):
        ClassSpec(names=("a", "b"), ignore_index=1)


# ---------------------------------------------------------------------------------- model files
def _model(encoder: RamenEncoder, reference=None) -> SegmentationModel:
    classes = ClassSpec(names=("land", "water"), colours=((10, 20, 30), (0, 0, 255)))
    head = HeadConfig(channels=8, norm="group")
    spec = ModalitySpec(
        name="s2", sensor="sentinel-2-l2a", bands=("B04", "B08"),
        band_physics=({"name": "B04", "kind": "optical", "wavelength_nm": 665.0},
                      {"name": "B08", "kind": "optical", "wavelength_nm": 842.0}),
        gsd=10.0, mean=(0.1, 0.3), std=(0.05, 0.1),
    )
    return SegmentationModel(build_segmenter(encoder, classes, head), classes, [spec], 20.0, head, reference)


def test_model_file_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _model(RamenEncoder(RamenConfig.tiny()))
    path = save_segmentation_model(tmp_path / "model.safetensors", model, extra_metadata={"metrics": {"miou": 0.5}})
    loaded = load_segmentation_model(path)
    assert loaded.classes == model.classes
    assert loaded.modalities == model.modalities
    assert loaded.gsd == 20.0
    assert loaded.head == model.head
    for key, value in model.segmenter.state_dict().items():
        assert torch.equal(loaded.segmenter.state_dict()[key], value), key


def test_model_file_with_encoder_reference(tmp_path):
    encoder = RamenEncoder(RamenConfig.tiny())
    weights = save_weights(tmp_path / "encoder.safetensors", encoder, encoder.config)
    from ramen_core.weights import sha256_file

    model = _model(encoder, {"source": str(weights), "sha256": sha256_file(weights)})
    path = save_segmentation_model(tmp_path / "model.safetensors", model, include_encoder=False)
    assert path.stat().st_size < weights.stat().st_size
    loaded = load_segmentation_model(path)
    assert torch.equal(loaded.segmenter.encoder.cls_token, encoder.cls_token)

    torch.manual_seed(1)
    save_weights(weights, RamenEncoder(RamenConfig.tiny()), encoder.config)
    with pytest.raises(WeightsError, match="SHA-256"):
        load_segmentation_model(path)


def test_encoder_weights_are_not_a_segmentation_model(tmp_path):
    encoder = RamenEncoder(RamenConfig.tiny())
    weights = save_weights(tmp_path / "encoder.safetensors", encoder, encoder.config)
    with pytest.raises(WeightsError, match="not a segmentation model"):
        load_segmentation_model(weights)
