"""Fine-tuning and segmentation on the real Sen1Floods11 Spain chip, end to end through the CLI.

The tiny encoder (random weights, frozen) and a small UPerNet head are trained once per
session on the left three quarters of the chip and validated on the right quarter. The
whole chip is then segmented with the saved model.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from ramen_cli.app import _register_commands, app
from ramen_core.embedding.inputs import FileInput
from ramen_core.errors import ConfigError, EmptyResultError, InputError, OutputError
from ramen_core.heads.bundle import load_segmentation_model
from ramen_core.inference.segment import segment
from ramen_core.training.finetune import finetune
from ramen_core.training.finetune_recipe import load_finetune_recipe
from ramen_core.training.geotiff_chips import RasterGrid

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "sen1floods11"
RECIPE = ROOT / "recipes" / "tiny_finetune_sen1floods11.toml"
S1 = DATA / "Spain_7370579_S1Hand.tif"
S2 = DATA / "Spain_7370579_S2Hand.tif"
LABEL = DATA / "Spain_7370579_LabelHand.tif"
EPOCHS = 3

runner = CliRunner()
_register_commands()


def _cut_tiles(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("cut_tiles", DATA / "cut_tiles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cut_tiles(out, 128)


def _data_overrides(tiles: Path) -> list[str]:
    overrides = []
    for split in ("train", "val"):
        overrides += [
            f"data.{split}.images.s1={tiles}/{split}/S1Hand/*_S1Hand.tif",
            f"data.{split}.images.s2={tiles}/{split}/S2Hand/*_S2Hand.tif",
            f"data.{split}.label={tiles}/{split}/LabelHand/*_LabelHand.tif",
        ]
    return overrides


def _set_args(overrides: list[str]) -> list[str]:
    args = []
    for override in overrides:
        args += ["--set", override]
    return args


@pytest.fixture(scope="session")
def tiles(tmp_path_factory):
    return _cut_tiles(tmp_path_factory.mktemp("sen1floods11_tiles"))


@pytest.fixture(scope="session")
def trained(tiles, tmp_path_factory):
    """Run `ramen finetune` once and return its output folder."""
    run_dir = tmp_path_factory.mktemp("finetune_run")
    overrides = _data_overrides(tiles) + [f"output.dir={run_dir}", f"schedule.epochs={EPOCHS}"]
    result = runner.invoke(app, ["finetune", "--recipe", str(RECIPE), *_set_args(overrides)])
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="session")
def segmented(trained, tmp_path_factory):
    """Run `ramen segment` once on the whole chip; return the class map and probability paths."""
    out = tmp_path_factory.mktemp("segment_run")
    classes, probabilities = out / "classes.tif", out / "probabilities.tif"
    result = runner.invoke(app, [
        "segment", str(S1), "--model", str(trained / "model.safetensors"), "--input", f"s2={S2}",
        "--probabilities", str(probabilities), "-o", str(classes), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    return classes, probabilities


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# ---------------------------------------------------------------------------------- fine-tuning
def test_finetune_beats_majority_baseline(trained):
    summary = json.loads((trained / "summary.json").read_text())
    best = summary["best"]
    assert best["miou"] > best["majority_class_miou"] + 0.1
    assert best["overall_accuracy"] > 0.7


def test_finetune_logs_every_epoch(trained):
    records = _records(trained)
    assert [record["epoch"] for record in records] == list(range(1, EPOCHS + 1))
    for record in records:
        assert "classes present in the validation labels" in record["miou_definition"]
        assert set(record["iou"]) == {"not water", "water"}
        assert np.array(record["confusion_matrix"]).shape == (2, 2)
        assert record["classes_present"] == ["not water", "water"]
        assert 0.0 <= record["overall_accuracy"] <= 1.0


def test_finetune_confusion_counts_validation_pixels(trained):
    record = _records(trained)[-1]
    with rasterio.open(LABEL) as dataset:
        label = dataset.read(1)
    held_out = label[:, 384:]
    assert np.sum(record["confusion_matrix"]) == np.sum(held_out >= 0)


def test_finetune_writes_plot(trained):
    png = (trained / "training.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_model_bundle_describes_task(trained):
    model = load_segmentation_model(trained / "model.safetensors")
    assert model.classes.names == ("not water", "water")
    assert model.classes.colours == ((217, 217, 217), (31, 120, 180))
    assert [spec.name for spec in model.modalities] == ["s1", "s2"]
    assert [spec.sensor for spec in model.modalities] == ["sentinel-1-grd", "sentinel-2-l1c"]
    assert model.modalities[1].bands == ("B02", "B03", "B04", "B08", "B11", "B12")
    assert model.modalities[0].orbit == "des"
    assert model.gsd == 40.0
    assert model.modalities[0].gsd == 10.0
    assert len(model.modalities[1].mean) == 6
    assert model.encoder_weights is None
    assert json.loads(model.metadata["metrics"])["miou"] > 0


# ---------------------------------------------------------------------------------- segmentation
def test_segment_writes_valid_cog(segmented):
    classes, _ = segmented
    valid, errors, _ = cog_validate(str(classes), quiet=True)
    assert valid, errors


def test_segment_aligned_with_label(segmented):
    classes, _ = segmented
    with rasterio.open(classes) as output, rasterio.open(LABEL) as label:
        assert RasterGrid.of(output).matches(RasterGrid.of(label))
        assert output.dtypes == ("uint8",)
        assert output.nodata == 255


def test_segment_classes_colours_and_tags(segmented):
    classes, _ = segmented
    with rasterio.open(classes) as output:
        values = output.read(1)
        colormap = output.colormap(1)
        tags = output.tags()
    assert set(np.unique(values)) <= {0, 1, 255}
    assert colormap[1] == (31, 120, 180, 255)
    assert colormap[255][3] == 0
    assert json.loads(tags["RAMEN_CLASS_NAMES"]) == ["not water", "water"]
    assert tags["RAMEN_GSD"] == "40"


def test_segment_matches_held_out_labels(segmented):
    classes, _ = segmented
    with rasterio.open(classes) as output, rasterio.open(LABEL) as label:
        predicted = output.read(1)[:, 384:]
        truth = label.read(1)[:, 384:]
    labelled = truth >= 0
    accuracy = np.mean(predicted[labelled] == truth[labelled])
    majority_share = max(np.mean(truth[labelled] == 0), np.mean(truth[labelled] == 1))
    assert accuracy > majority_share


def test_segment_probabilities_sum_to_one(segmented):
    classes, probabilities = segmented
    with rasterio.open(probabilities) as dataset:
        values = dataset.read()
        descriptions = dataset.descriptions
    with rasterio.open(classes) as output:
        predicted = output.read(1)
    assert descriptions == ("probability_not water", "probability_water")
    assert np.allclose(values.sum(axis=0), 1.0, atol=1e-4)
    assert np.array_equal(values.argmax(axis=0), predicted)


# ---------------------------------------------------------------------------------- bad input
def _recipe(tiles: Path, run_dir: Path, *extra: str):
    return load_finetune_recipe(RECIPE, _data_overrides(tiles) + [f"output.dir={run_dir}", *extra])


def _copy_tiles(tiles: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(tiles, target)
    return target


def test_empty_training_set_rejected(tiles, tmp_path):
    recipe = _recipe(tiles, tmp_path, f"data.train.label={tmp_path}/none/*_LabelHand.tif")
    with pytest.raises(EmptyResultError, match="train set is empty"):
        finetune(recipe)


def test_empty_training_set_cli_message(tiles, tmp_path):
    overrides = _data_overrides(tiles) + [f"data.train.label={tmp_path}/none/*_LabelHand.tif", f"output.dir={tmp_path}"]
    result = runner.invoke(app, ["finetune", "--recipe", str(RECIPE), *_set_args(overrides)])
    assert result.exit_code == 1
    assert "train set is empty" in result.output
    assert "Traceback" not in result.output


def test_finetune_keeps_earlier_model(tiles, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_bytes(b"an earlier model")
    with pytest.raises(OutputError, match="already contains a model of an earlier run; pass --overwrite"):
        finetune(_recipe(tiles, run_dir))
    assert (run_dir / "model.safetensors").read_bytes() == b"an earlier model"


def test_finetune_gsd_without_tokens(tiles, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"'data.gsd': at 1000 m a train chip .* holds no token; .* at most 640 m"):
        finetune(_recipe(tiles, run_dir, "data.gsd=1000.0"))
    assert not run_dir.exists()


def test_finetune_fine_gsd_warns(tiles, tmp_path, caplog):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="block 9 does not exist"):
        finetune(_recipe(tiles, run_dir, "data.gsd=2.0", "head.blocks=[1, 2, 2, 9]"))
    assert "data.gsd 2 m is finer than the finest input (10 m)" in caplog.text
    assert not run_dir.exists()


def test_label_grid_mismatch_rejected(tiles, tmp_path):
    copy = _copy_tiles(tiles, tmp_path / "tiles")
    path = sorted((copy / "train" / "LabelHand").glob("*.tif"))[0]
    with rasterio.open(path, "r+") as dataset:
        dataset.transform = dataset.transform @ dataset.transform.translation(3, 0)
    with pytest.raises(InputError, match="label grid .* differs"):
        finetune(_recipe(copy, tmp_path / "run"))


def test_undeclared_class_rejected(tiles, tmp_path):
    copy = _copy_tiles(tiles, tmp_path / "tiles")
    path = sorted((copy / "val" / "LabelHand").glob("*.tif"))[0]
    with rasterio.open(path, "r+") as dataset:
        label = dataset.read(1)
        label[0, :10] = 7
        dataset.write(label, 1)
    with pytest.raises(InputError, match=r"values \[7\] that are not declared classes"):
        finetune(_recipe(copy, tmp_path / "run"))


def test_segment_rejects_other_sensor(trained, tmp_path):
    with pytest.raises(InputError, match="trained on sentinel-2-l1c"):
        segment(
            [FileInput(S1, "", name="s1"), FileInput(S2, "landsat", name="s2")], tmp_path / "out.tif",
            model=trained / "model.safetensors",
        )
    assert not (tmp_path / "out.tif").exists()


def test_segment_rejects_missing_input(trained, tmp_path):
    result = runner.invoke(app, ["segment", str(S1), "--model", str(trained / "model.safetensors"),
                                 "-o", str(tmp_path / "out.tif")])
    assert result.exit_code == 1
    assert "missing s2" in result.output
    assert not (tmp_path / "out.tif").exists()


def test_segment_rejects_shared_output_paths(trained, tmp_path):
    output = tmp_path / "out.tif"
    result = runner.invoke(app, ["segment", str(S1), "--input", f"s2={S2}", "--model", str(trained / "model.safetensors"),
                                 "-o", str(output), "--probabilities", str(output)])
    assert result.exit_code == 1
    assert "the class map and the probabilities are both" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_segment_rejects_area_below_one_token(trained, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for name, source in (("s1", S1), ("s2", S2)):
        with rasterio.open(source) as dataset:
            window = rasterio.windows.Window(100, 100, 3, 3)
            profile = {**dataset.profile, "width": 3, "height": 3, "transform": dataset.window_transform(window)}
            with rasterio.open(small / f"{name}.tif", "w", **profile) as target:
                target.write(dataset.read(window=window))
                target.descriptions = dataset.descriptions
    output = tmp_path / "out.tif"
    result = runner.invoke(app, ["segment", str(small / "s1.tif"), "--input", f"s2={small / 's2.tif'}",
                                 "--model", str(trained / "model.safetensors"), "-o", str(output)])
    assert result.exit_code == 1
    assert "smaller than one token at GSD 40 m" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not output.exists()


# ---------------------------------------------------------------------------------- chip datasets
def test_finetune_on_labelled_chip_dataset(tmp_path):
    from ramen_core.typed_toml import read_toml
    from ramen_core.training.finetune_recipe import finetune_recipe_from_dict

    chips = tmp_path / "chips"
    result = runner.invoke(app, [
        "chips", str(chips), "--spec", str(ROOT / "recipes" / "chips" / "sen1floods11.toml"),
        "--labels", str(LABEL), "--classes", "not water,water", "--ignore-values=-1", "--set", "stride=96",
    ])
    assert result.exit_code == 0, result.output

    data = read_toml(RECIPE)
    data["data"]["inputs"]["s2"]["bands"] = []
    data["data"]["train"] = {"chips": str(chips)}
    data["data"]["val"] = {"chips": str(chips)}
    data["schedule"] = {"epochs": 1, "warmup_epochs": 0}
    data["train"]["max_steps"] = 2
    data["output"] = {"dir": str(tmp_path / "run"), "plot": False}
    recipe = finetune_recipe_from_dict(data, base_dir=RECIPE.parent, source=str(RECIPE))
    outcome = finetune(recipe)

    model = load_segmentation_model(outcome.model_path)
    assert model.modalities[1].bands[0] == "B01"
    assert model.modalities[0].gsd == 10.0
    assert np.sum(outcome.best_scores.confusion) > 0


def test_chips_labels_reject_undeclared_values(tmp_path):
    result = runner.invoke(app, [
        "chips", str(tmp_path / "chips"), "--spec", str(ROOT / "recipes" / "chips" / "sen1floods11.toml"),
        "--labels", str(LABEL), "--classes", "not water,water",
    ])
    assert result.exit_code == 1
    assert "values [-1] outside the classes" in " ".join(result.output.split())


# ---------------------------------------------------------------------------------- determinism and resume
# The north-west quarter of the chip, in degrees.
QUARTER = (-0.7818, 38.1059, -0.7589, 38.1288)


def _segment_coarse(model_path: Path, output: Path, **options):
    inputs = [FileInput(S1, "", name="s1", orbit="des"), FileInput(S2, "", name="s2")]
    return segment(
        inputs, output, model=model_path, output_gsd=40.0, bbox=QUARTER, window=16, batch_size=2, **options
    )


def test_segment_deterministic_and_resumable(trained, tmp_path):
    model_path = trained / "model.safetensors"
    first = _segment_coarse(model_path, tmp_path / "first.tif")
    second = _segment_coarse(model_path, tmp_path / "second.tif")
    assert first.grid.gsd == 40.0
    assert (tmp_path / "first.tif").read_bytes() == (tmp_path / "second.tif").read_bytes()

    def stop_after_two_batches(update):
        if update.stage == "windows" and update.windows_done >= 4:
            raise KeyboardInterrupt

    interrupted = tmp_path / "resumed.tif"
    with pytest.raises(KeyboardInterrupt):
        _segment_coarse(model_path, interrupted, checkpoint_interval=0.0, progress=stop_after_two_batches)
    assert not interrupted.exists()
    assert (tmp_path / "resumed.tif.ramen-partial").is_dir()
    _segment_coarse(model_path, interrupted, resume=True)
    assert interrupted.read_bytes() == (tmp_path / "first.tif").read_bytes()
    assert not (tmp_path / "resumed.tif.ramen-partial").exists()


def test_segment_warns_of_fine_gsd(trained, tmp_path, caplog):
    inputs = [FileInput(S1, "", name="s1", orbit="des"), FileInput(S2, "", name="s2")]
    tiny_area = (-0.7700, 38.1100, -0.7690, 38.1110)
    segment(inputs, tmp_path / "fine.tif", model=trained / "model.safetensors", bbox=tiny_area, gsd=5.0, window=8)
    assert "GSD 5 m is finer than the finest input (10 m)" in caplog.text


def test_segment_bbox_on_input_grid(trained, tmp_path):
    inputs = [FileInput(S1, "", name="s1", orbit="des"), FileInput(S2, "", name="s2")]
    result = segment(inputs, tmp_path / "quarter.tif", model=trained / "model.safetensors", bbox=QUARTER, window=16)
    with rasterio.open(S1) as source, rasterio.open(tmp_path / "quarter.tif") as output:
        column, row = ~source.transform * (output.transform.c, output.transform.f)
        assert output.crs == source.crs
        assert (output.transform.a, output.transform.e) == (source.transform.a, source.transform.e)
        assert abs(column - round(column)) < 1e-6
        assert abs(row - round(row)) < 1e-6
        assert 240 <= output.width <= 260
        assert 240 <= output.height <= 260
    assert result.grid.width == output.width


def test_finetune_interrupt_names_saved_model(tiles, tmp_path, monkeypatch):
    import ramen_cli.cmd_finetune as command

    def interrupted(recipe, on_event, overwrite):
        on_event({"event": "epoch", "improved": True, "epoch": 2, "miou": 0.5, "train_loss": 1.0, "val_loss": 1.0,
                  "majority_class_miou": 0.3, "overall_accuracy": 0.8, "iou": {"water": 0.5}})
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "finetune", interrupted)
    overrides = _data_overrides(tiles) + [f"output.dir={tmp_path / 'run'}"]
    result = runner.invoke(app, ["finetune", "--recipe", str(RECIPE), *_set_args(overrides)])
    assert result.exit_code == 130
    assert "The best epoch so far, 2 (mIoU 0.5000), is saved in" in " ".join(result.output.split())
