"""MAE pre-training on chips of the real samples: learning, outputs, exact resume, DDP, bad input."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pretrain_fixtures import TINY_RECIPE, TINY_STEPS, TinyRun, dataset_overrides
from ramen_cli.app import _register_commands, app
from ramen_core.chips import ChipDataset, collate_chips, to_modality_inputs
from ramen_core.errors import ConfigError, InputError, OutputError, WeightsError
from ramen_core.model import RamenEncoder
from ramen_core.training import load_recipe, parameter_fingerprint, pretrain
from ramen_core.training.data import PretrainData
from ramen_core.training.pretrain_log import read_metrics
from ramen_core.training.recipe import OptimRecipe, ScheduleRecipe
from ramen_core.training.sampling import mask_noise, plan_step
from ramen_core.training.schedule import learning_rate
from ramen_core.weights import load_encoder, load_weights

TESTS = Path(__file__).resolve().parent


def _small_run(chips: dict[str, Path], root: Path, steps: int, *extra: str) -> list[str]:
    """Overrides for a short, cheap run of the tiny recipe writing under ``root``."""
    return dataset_overrides(chips) + [
        f"checkpoint.dir={root / 'checkpoints'}",
        f"log.dir={root / 'log'}",
        f"train.max_steps={steps}",
        "checkpoint.every_epochs=0",
        "log.plot=false",
        "train.cpu_threads=1",
        "datasets.sen1floods11.batch_size=2",
        "datasets.bigearthnet.batch_size=2",
        "datasets.luxembourg.batch_size=2",
        "datasets.s2_timeseries.batch_size=2",
        *extra,
    ]


def _batch_losses(log_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(log_dir / "metrics.jsonl") if record["kind"] == "batch"]


# ---------------------------------------------------------------------------------- the shared run
def test_loss_falls(tiny_run: TinyRun) -> None:
    summary = tiny_run.result.summary  # type: ignore[attr-defined]
    assert summary["micro_steps"] == TINY_STEPS
    assert summary["loss_last"] < 0.7 * summary["loss_first"]
    for name, losses in summary["by_modality"].items():
        if losses["first"] is not None and losses["last"] is not None:
            assert losses["last"] < losses["first"], name


def test_run_writes_metrics_and_plot(tiny_run: TinyRun) -> None:
    records = read_metrics(tiny_run.log_dir / "metrics.jsonl")
    batches = [record for record in records if record["kind"] == "batch"]
    steps = [record for record in records if record["kind"] == "step"]
    assert len(batches) == TINY_STEPS
    assert len(steps) == TINY_STEPS
    assert {record["dataset"] for record in batches} == {"sen1floods11", "bigearthnet", "luxembourg", "s2_timeseries"}
    for record in batches:
        assert set(record["losses"]) == set(record["modalities"])
        assert math.isfinite(record["loss"])
        assert record["loss"] == pytest.approx(sum(record["losses"].values()), rel=1e-5)
    assert all(step["grad_norm"] > 0 for step in steps)
    assert steps[0]["lr"] < steps[-1]["lr"]  # still warming up after 40 of 52 warm-up steps
    assert (tiny_run.log_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tiny_run.log_dir / "summary.json").read_text())
    assert summary["step"] == TINY_STEPS
    assert summary["by_gsd"]


def test_checkpoints_kept_and_pointer(tiny_run: TinyRun) -> None:
    folder = tiny_run.checkpoint_dir
    assert sorted(path.name for path in folder.glob("step-*.safetensors")) == [
        "step-00000020.safetensors", "step-00000040.safetensors",
    ]
    latest = json.loads((folder / "latest.json").read_text())
    assert latest == {"step": 40, "weights": "step-00000040.safetensors", "state": "step-00000040.state.pt"}
    payload = torch.load(folder / latest["state"], weights_only=True)
    assert payload["state"]["step"] == 40
    assert not list(folder.glob(".*tmp"))


def test_exported_encoder_loads_and_embeds(tiny_run: TinyRun, sample_chips: dict[str, Path]) -> None:
    path = tiny_run.checkpoint_dir / "encoder.safetensors"
    loaded = load_weights(path)
    assert loaded.parts == ["encoder"]
    normalization = json.loads(loaded.metadata["normalization"])
    assert normalization["sen1floods11"]["s1"]["bands"] == ["vv", "vh"]
    assert len(normalization["sen1floods11"]["s2"]["mean"]) == 13
    encoder = load_encoder(path)
    assert isinstance(encoder, RamenEncoder)

    dataset = ChipDataset(sample_chips["bigearthnet"])
    batch = collate_chips([dataset[0], dataset[1]])
    inputs = to_modality_inputs(batch, dataset.manifest, ["s2", "s1"], dataset.manifest.stats)
    with torch.no_grad():
        output = encoder(inputs, target_gsd=40.0)
    assert tuple(output.maps().shape) == (2, 2, 64, 10, 10)
    trained = tiny_run.result.model.encoder.state_dict()  # type: ignore[attr-defined]
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, trained[key]), key


# ---------------------------------------------------------------------------------- resume
def test_resume_matches_uninterrupted(sample_chips: dict[str, Path], tmp_path: Path) -> None:
    extra = ("optim.grad_accumulation=2", "schedule.steps_per_epoch=3", "schedule.warmup_epochs=1")
    whole = load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path / "whole", 6, *extra))
    uninterrupted = pretrain(whole)

    first = load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path / "split", 3, *extra))
    pretrain(first)
    second = load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path / "split", 6, *extra))
    resumed = pretrain(second, resume=True)

    expected = _batch_losses(tmp_path / "whole" / "log")
    actual = _batch_losses(tmp_path / "split" / "log")
    assert len(expected) == 12
    assert len(actual) == 12
    for a, b in zip(actual, expected):
        assert a == pytest.approx(b, rel=1e-6)
    assert resumed.state.step == 6
    assert resumed.state.consumed == uninterrupted.state.consumed
    assert parameter_fingerprint(resumed.model) == parameter_fingerprint(uninterrupted.model)
    for (name, a), b in zip(resumed.model.named_buffers(), uninterrupted.model.buffers()):
        assert torch.equal(a, b), name


def test_resume_rejects_other_model(sample_chips: dict[str, Path], tmp_path: Path) -> None:
    pretrain(load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path, 1)))
    other = load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path, 2, "model.depth=3"))
    with pytest.raises(WeightsError, match=r"another model config: depth 2 \(checkpoint\) vs 3 \(recipe\)"):
        pretrain(other, resume=True)


def test_resume_warns_on_recipe_change(sample_chips: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pretrain(load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path, 1)))
    with caplog.at_level("WARNING", logger="ramen_core.training.pretrain"):
        pretrain(load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path, 2)), resume=True)
    assert "differ from the checkpoint" not in caplog.text
    with caplog.at_level("WARNING", logger="ramen_core.training.pretrain"):
        pretrain(load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path, 3, "optim.lr=1e-4")), resume=True)
    assert "differ from the checkpoint's (optim.lr)" in caplog.text


def test_fresh_start_keeps_existing_run(sample_chips: dict[str, Path], tmp_path: Path) -> None:
    recipe = load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path, 1))
    pretrain(recipe)
    with pytest.raises(OutputError, match="already contains a run"):
        pretrain(recipe)


def test_resume_without_checkpoint(sample_chips: dict[str, Path], tmp_path: Path) -> None:
    recipe = load_recipe(TINY_RECIPE, _small_run(sample_chips, tmp_path, 1))
    with pytest.raises(InputError, match="not found; give a checkpoint folder"):
        pretrain(recipe, resume=True)


# ---------------------------------------------------------------------------------- bad input
def test_modality_missing_from_dataset(sample_chips: dict[str, Path]) -> None:
    recipe = load_recipe(TINY_RECIPE, dataset_overrides(sample_chips) + ['datasets.s2_timeseries.modalities=["s2", "s1"]'])
    with pytest.raises(ConfigError, match=r"'datasets\.s2_timeseries\.modalities'.*no modality 's1'; it has s2$"):
        PretrainData(recipe)


def test_gsd_without_tokens(sample_chips: dict[str, Path]) -> None:
    recipe = load_recipe(
        TINY_RECIPE, dataset_overrides(sample_chips) + ["datasets.sen1floods11.target_gsd={min = 20, max = 400}"]
    )
    with pytest.raises(ConfigError, match=r"'datasets\.sen1floods11\.target_gsd': at 400 m .* holds no token; .* at most 320 m"):
        PretrainData(recipe)


def test_gsd_masking_no_token(sample_chips: dict[str, Path]) -> None:
    # 16 km chips at 16 km hold one token, which the masking keeps: the loss would be NaN.
    recipe = load_recipe(TINY_RECIPE, dataset_overrides(sample_chips) + ["datasets.luxembourg.target_gsd=[16000.0]"])
    with pytest.raises(ConfigError, match=r"has 1x1 tokens, too few to mask any at mask ratio 0\.75"):
        PretrainData(recipe)


def test_gsd_finer_than_chips(sample_chips: dict[str, Path]) -> None:
    recipe = load_recipe(TINY_RECIPE, dataset_overrides(sample_chips) + ["datasets.luxembourg.target_gsd=[1.0, 1000.0]"])
    with pytest.raises(ConfigError, match=r"1 m is finer than the finest native GSD .* 1000 m, .* 16000x16000 tokens"):
        PretrainData(recipe)


def test_recipe_expectations_checked(sample_chips: dict[str, Path]) -> None:
    recipe = load_recipe(TINY_RECIPE, dataset_overrides(sample_chips) + ["datasets.bigearthnet.native_gsd.s2=20.0"])
    with pytest.raises(ConfigError, match=r"native_gsd\.s2': the recipe expects 20 m .* stores 10 m"):
        PretrainData(recipe)
    recipe = load_recipe(TINY_RECIPE, dataset_overrides(sample_chips) + ['datasets.sen1floods11.bands.s1=["asc_vv", "asc_vh"]'])
    with pytest.raises(ConfigError, match=r"expects \[asc_vv, asc_vh\] but .* stores \[des_vv, des_vh\]"):
        PretrainData(recipe)


def test_empty_or_missing_dataset(sample_chips: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    recipe = load_recipe(TINY_RECIPE, dataset_overrides(sample_chips) + [f"datasets.luxembourg.path={tmp_path / 'empty'}"])
    with pytest.raises(InputError, match="no manifest.json"):
        PretrainData(recipe)
    recipe = load_recipe(TINY_RECIPE, dataset_overrides(sample_chips) + [f"datasets.luxembourg.path={tmp_path / 'none'}"])
    with pytest.raises(InputError, match="not found"):
        PretrainData(recipe)


def test_missing_statistics(sample_chips: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "nostats"
    folder.mkdir()
    source = sample_chips["luxembourg"]
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["stats"] = None
    (folder / "manifest.json").write_text(json.dumps(manifest))
    recipe = load_recipe(TINY_RECIPE, dataset_overrides(sample_chips) + [f"datasets.luxembourg.path={folder}"])
    with pytest.raises(ConfigError, match="no normalisation statistics.*--stats"):
        PretrainData(recipe)


# ---------------------------------------------------------------------------------- sampling, schedule
def test_plan_is_shared_and_valid() -> None:
    recipe = load_recipe(TINY_RECIPE)
    datasets = list(recipe.datasets.values())
    plans = [plan_step(7, step, datasets) for step in range(300)]
    assert plans == [plan_step(7, step, datasets) for step in range(300)]
    assert plans != [plan_step(8, step, datasets) for step in range(300)]
    counts = {name: sum(plan.dataset == name for plan in plans) for name in recipe.datasets}
    assert counts["luxembourg"] < counts["sen1floods11"]  # weight 0.5 against 1
    for plan in plans:
        dataset = recipe.datasets[plan.dataset]
        assert plan.modalities
        assert list(plan.modalities) == [name for name in dataset.modalities if name in plan.modalities]
        assert plan.target_gsd in dataset.gsd_values()
    subsets = {plan.modalities for plan in plans if plan.dataset == "sen1floods11"}
    assert subsets == {("s2",), ("s1",), ("s2", "s1")}


def test_mask_noise_differs_by_rank() -> None:
    assert torch.equal(mask_noise(1, 0, 5, 2, 16), mask_noise(1, 0, 5, 2, 16))
    assert not torch.equal(mask_noise(1, 0, 5, 2, 16), mask_noise(1, 1, 5, 2, 16))
    assert not torch.equal(mask_noise(1, 0, 5, 2, 16), mask_noise(1, 0, 6, 2, 16))


def test_warmup_then_cosine() -> None:
    optim = OptimRecipe(lr=1e-3, warmup_start_lr=1e-5, min_lr=1e-6)
    schedule = ScheduleRecipe(epochs=10, warmup_epochs=2)
    assert learning_rate(0, 5, optim, schedule) == pytest.approx(1e-5)
    assert learning_rate(5, 5, optim, schedule) == pytest.approx((1e-5 + 1e-3) / 2)
    assert learning_rate(10, 5, optim, schedule) == pytest.approx(1e-3)
    assert learning_rate(30, 5, optim, schedule) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert learning_rate(50, 5, optim, schedule) == pytest.approx(1e-6)
    assert learning_rate(80, 5, optim, schedule) == pytest.approx(1e-6)
    by_epoch = ScheduleRecipe(epochs=10, warmup_epochs=2, interval="epoch")
    assert learning_rate(4, 5, optim, by_epoch) == pytest.approx(1e-5)
    assert learning_rate(7, 5, optim, by_epoch) == learning_rate(5, 5, optim, by_epoch)


# ---------------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_ranks_stay_in_sync(sample_chips: dict[str, Path], tmp_path: Path) -> None:
    overrides = _small_run(sample_chips, tmp_path, 3, "optim.grad_accumulation=2", "train.device=cpu")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(TESTS / "ddp_pretrain_worker.py"), str(tmp_path), str(TINY_RECIPE), *overrides,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert finished.returncode == 0, finished.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    draws = [[(h["dataset"], tuple(h["modalities"]), h["target_gsd"]) for h in rank["history"]] for rank in ranks]
    assert len(draws[0]) == 6
    assert draws[0] == draws[1]
    ids = [[tuple(h["chip_ids"]) for h in rank["history"]] for rank in ranks]
    assert all(set(a).isdisjoint(b) for a, b in zip(ids[0], ids[1]))
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
    losses = [[h["rank_loss"] for h in rank["history"]] for rank in ranks]
    assert losses[0] != losses[1]
    assert ranks[0]["checkpoint"] is not None
    assert ranks[1]["checkpoint"] is None
    logged = _batch_losses(tmp_path / "log")
    for mean, a, b in zip(logged, losses[0], losses[1]):
        assert mean == pytest.approx((a + b) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------- command line
def test_pretrain_command(sample_chips: dict[str, Path], tmp_path: Path) -> None:
    _register_commands()
    runner = CliRunner()
    arguments = ["pretrain", "--recipe", str(TINY_RECIPE)]
    for override in _small_run(sample_chips, tmp_path, 2):
        arguments += ["--set", override]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "encoder for `ramen embed`" in result.output

    result = runner.invoke(app, arguments + ["--dry-run"])
    assert result.exit_code == 0, result.output
    assert "steps per epoch" in result.output

    result = runner.invoke(app, ["pretrain", "export", str(tmp_path / "checkpoints"), "--out", str(tmp_path / "enc.safetensors")])
    assert result.exit_code == 0, result.output
    assert load_weights(tmp_path / "enc.safetensors").parts == ["encoder"]

    result = runner.invoke(app, arguments + ["--set", "optim.lr=fast"])
    assert result.exit_code == 1
    assert "'optim.lr'" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(app, arguments + ["--set", "model.depth=3", "--resume"])
    assert result.exit_code == 1
    assert "another model config" in result.output

    blocker = tmp_path / "a_file"
    blocker.write_text("", encoding="utf-8")
    result = runner.invoke(app, ["pretrain", "statistics", str(tmp_path / "enc.safetensors"),
                                 "--dataset", "luxembourg", "--out", str(blocker / "stats.json")])
    assert result.exit_code == 1
    assert "cannot write statistics file" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_checkpoint_header_size_0x80_loads(tmp_path: Path) -> None:
    """A safetensors header size whose low byte is 0x80 must not be read as a pickle."""
    from ramen_core.model import RamenConfig, RamenMAE
    from ramen_core.weights import save_weights

    model = RamenMAE(RamenConfig.tiny())
    path = tmp_path / "mae.safetensors"
    padding = 0
    for _ in range(64):
        save_weights(path, model, RamenConfig.tiny(), {"padding": "x" * padding})
        first = path.read_bytes()[0]
        if first == 0x80:
            break
        padding += (0x80 - first) % 256 or 8
    assert path.read_bytes()[0] == 0x80
    assert load_weights(path).metadata["padding"] == "x" * padding


def test_training_statistics_for_embed(tiny_run: TinyRun, tmp_path: Path) -> None:
    from ramen_core.training import training_statistics

    metadata = load_weights(tiny_run.checkpoint_dir / "encoder.safetensors").metadata
    table = training_statistics(metadata, "sen1floods11")
    assert set(table) == {"sentinel-2-l1c", "sentinel-1-grd"}
    assert set(table["sentinel-1-grd"]) == {"vv", "vh"}
    assert table["sentinel-1-grd"]["vv"]["std"] > 0
    with pytest.raises(WeightsError, match="several datasets"):
        training_statistics(metadata)
    with pytest.raises(WeightsError, match="no training dataset 'mmearth'"):
        training_statistics(metadata, "mmearth")

    _register_commands()
    output = tmp_path / "stats.json"
    result = CliRunner().invoke(app, [
        "pretrain", "statistics", str(tiny_run.checkpoint_dir / "encoder.safetensors"),
        "--dataset", "luxembourg", "--out", str(output),
    ])
    assert result.exit_code == 0, result.output
    assert set(json.loads(output.read_text())) == {"sentinel-2-l2a", "cop-dem-glo-30"}
