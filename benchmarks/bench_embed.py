"""End-to-end throughput of ``embed`` on a real scene, and its overhead over the model alone.

The scene is the Major TOM Sentinel-2 L2A crop in ``tests/data`` (3.84 km x 3.84 km, 12 bands
at 10, 20 and 60 m). For each GSD the script times:

- end to end: one ``embed()`` call: weights loaded from a local safetensors file, inputs
  opened, windows planned, read, encoded, blended, written to a raw GeoTIFF and converted
  to a validated COG;
- model only: the encoder on the same windows in the same batches, with inputs read and
  normalised beforehand, so that only the encoder runs in the timed loop.

It prints km² per second and tokens per second end to end, the time of the window engine
(reading, encoding, blending and writing rows, without loading the weights and converting
to a COG), the time spent in the model during the run, and the ratio of end-to-end
time to model-only time (the target is 1.3 or less: reading, tiling and writing must not
dominate). Weights are random: speed does not depend on their values.

Usage: python benchmarks/bench_embed.py [--size tiny|base] [--gsd 20 40 80] [--window 32]
       [--batch-size 8] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ramen_core.embedding import FileInput, embed, plan_embedding
from ramen_core.embedding.task import EmbeddingTaskFactory
from ramen_core.inference.normalization import registry_normalization
from ramen_core.model import RamenConfig, RamenEncoder
from ramen_core.weights import save_weights

SCENE = Path(__file__).resolve().parents[1] / "tests" / "data" / "majortom_core_s2l2a" / "S2L2A_crop"


def model_only_seconds(weights: Path, encoder: RamenEncoder, gsd: float, window: int, batch_size: int) -> float:
    """Time the encoder alone on the windows and batches that ``embed`` uses at this GSD."""
    embed_plan = plan_embedding(FileInput(SCENE, "s2"), gsd=gsd, weights=weights, window=window)
    factory = EmbeddingTaskFactory(
        key="benchmark", weights=str(weights), trust_checkpoint=False, modalities=embed_plan.modalities,
        grid=embed_plan.grid, normalization=registry_normalization(embed_plan.modalities),
        layer=embed_plan.config.depth, fuse="mean", pooling=None, device="cpu", precision="fp32", encoder=encoder,
    )
    task = factory()
    plan = embed_plan.plan
    batches = []
    for tile in plan.tiles:
        windows = plan.windows_for(tile)
        for offset in range(0, len(windows), batch_size):
            batch = windows[offset : offset + batch_size]
            batches.append((batch, task.read(batch)))
    started = time.perf_counter()
    for batch, inputs in batches:
        task.run(batch, inputs)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "base"), default="base")
    parser.add_argument("--gsd", type=float, nargs="+", default=[20.0, 40.0, 80.0])
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = RamenConfig.tiny() if args.size == "tiny" else RamenConfig.base()
    torch.manual_seed(0)
    encoder = RamenEncoder(config).eval()
    print(f"model {args.size}, {args.threads} thread(s), window {args.window}, batch {args.batch_size}")
    print("| GSD (m) | grid | windows | tokens | end to end (s) | engine (s) | model in run (s) | model only (s) "
          "| ratio | km²/s | tokens/s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="ramen-bench-embed-") as folder:
        weights = Path(folder) / f"{args.size}.safetensors"
        save_weights(weights, encoder, config)
        for gsd in args.gsd:
            output = Path(folder) / f"embed_{gsd:g}.tif"
            started = time.perf_counter()
            result = embed(FileInput(SCENE, "s2"), output, gsd=gsd, weights=weights, window=args.window,
                           batch_size=args.batch_size, device="cpu", overwrite=True)
            end_to_end = time.perf_counter() - started
            model = model_only_seconds(weights, encoder, gsd, args.window, args.batch_size)
            grid = result.grid
            area_km2 = grid.width * grid.height * (gsd / 1000.0) ** 2
            print(
                f"| {gsd:g} | {grid.width}x{grid.height} | {result.report.windows} | {result.report.tokens:,} | "
                f"{end_to_end:.1f} | {result.report.total_seconds:.1f} | {result.report.model_seconds:.1f} | "
                f"{model:.1f} | {end_to_end / model:.2f} | {area_km2 / end_to_end:.3g} | "
                f"{result.report.tokens / end_to_end:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
