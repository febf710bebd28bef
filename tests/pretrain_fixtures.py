"""Session fixtures for the chip and pre-training tests: chips of the real samples, one tiny run.

``tests/conftest.py`` imports the fixtures, so every test module can use them, and each is
built once per test session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "recipes" / "chips"
TINY_RECIPE = REPO / "recipes" / "tiny_mae.toml"

# Recipe dataset name -> chip spec name, for recipes/tiny_mae.toml.
TINY_DATASETS = {
    "sen1floods11": "sen1floods11",
    "bigearthnet": "bigearthnet",
    "luxembourg": "luxembourg",
    "s2_timeseries": "s2_timeseries_33TWM",
}
# Steps of the shared tiny run: enough for the loss to fall clearly, few enough for CI.
TINY_STEPS = 40


@dataclass
class TinyRun:
    """The shared tiny pre-training run and where it wrote."""

    result: object
    checkpoint_dir: Path
    log_dir: Path


def dataset_overrides(chips: dict[str, Path]) -> list[str]:
    """Return ``--set`` overrides that point recipes/tiny_mae.toml at the built chips."""
    return [f"datasets.{name}.path={chips[spec]}" for name, spec in TINY_DATASETS.items()]


@pytest.fixture(scope="session")
def sample_chips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the chips of the tiny recipe's specs (with statistics) once: spec name -> folder."""
    from ramen_core.chips import build_chips, load_chip_spec

    root = tmp_path_factory.mktemp("chips")
    folders = {}
    for name in TINY_DATASETS.values():
        folders[name] = root / name
        build_chips(load_chip_spec(SPECS / f"{name}.toml"), folders[name], stats=True)
    return folders


@pytest.fixture(scope="session")
def tiny_run(sample_chips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Train recipes/tiny_mae.toml for a few steps on the sample chips, once per session."""
    from ramen_core.training import load_recipe, pretrain

    root = tmp_path_factory.mktemp("tiny_run")
    overrides = dataset_overrides(sample_chips) + [
        f"train.max_steps={TINY_STEPS}",
        f"checkpoint.dir={root / 'checkpoints'}",
        f"log.dir={root / 'log'}",
        "checkpoint.every_steps=20",
        "train.cpu_threads=1",
    ]
    recipe = load_recipe(TINY_RECIPE, overrides)
    result = pretrain(recipe)
    return TinyRun(result=result, checkpoint_dir=root / "checkpoints", log_dir=root / "log")
