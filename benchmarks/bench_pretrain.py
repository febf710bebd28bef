"""Throughput of MAE pre-training steps on real chips, for the tiny and ViT-Base models.

Cuts the Sen1Floods11 sample into 32 x 32 px chips (Sentinel-2 13 bands + Sentinel-1 2
bands at 10 m), then times full training steps (forward, masked reconstruction loss,
backward, gradient clipping and AdamW) at each target GSD. Prints one row per case:
samples per second, tokens per second (all M x rows x cols tokens of a sample before
masking, of which the encoder processes 25 %) and seconds per step. Weights are random: speed
does not depend on their values.

Usage: python benchmarks/bench_pretrain.py [--sizes tiny base] [--batch 8] [--steps 5]
       [--threads N] [--device cpu|cuda] [--gsd 20 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from ramen_core.chips import ChipDataset, ChipStream, build_chips, collate_chips, load_chip_spec, to_modality_inputs
from ramen_core.model import RamenConfig, RamenMAE, grid_shape
from ramen_core.training.pretrain import build_optimizer
from ramen_core.training.recipe import OptimRecipe
from ramen_core.training.sampling import mask_noise

SPEC = Path(__file__).resolve().parent.parent / "recipes" / "chips" / "sen1floods11.toml"


def _batches(folder: Path, batch: int, device: torch.device):
    dataset = ChipDataset(folder)
    stream = iter(ChipStream(dataset, seed=0))
    while True:
        chips = collate_chips([next(stream) for _ in range(batch)])
        yield to_modality_inputs(chips, dataset.manifest, ["s2", "s1"], dataset.manifest.stats, device)


def _time_case(size: str, folder: Path, batch: int, gsd: float, steps: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = RamenConfig.preset(size)
    model = RamenMAE(config).to(device).train()
    optimizer = build_optimizer(model, OptimRecipe())
    batches = _batches(folder, batch, device)
    use_bf16 = device.type == "cuda"

    def step(index: int) -> None:
        modalities = next(batches)
        first = modalities[0]
        rows, cols = grid_shape(first.data.shape[-2], first.data.shape[-1], first.gsd, gsd)
        noise = mask_noise(0, 0, index, batch, len(modalities) * rows * cols).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(modalities, gsd, mask_ratio=0.75, noise=noise).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(-1)  # warm-up: allocations, first-call overheads
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for index in range(steps):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    rows, cols = grid_shape(32, 32, 10.0, gsd)
    tokens = batch * 2 * rows * cols
    return {
        "model": size, "batch": batch, "target_gsd": gsd, "grid": f"{rows}x{cols}", "tokens_per_sample": 2 * rows * cols,
        "seconds_per_step": seconds, "samples_per_s": batch / seconds, "tokens_per_s": tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--gsd", type=float, nargs="+", default=[20.0, 40.0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows to this JSON file.")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    device = torch.device(arguments.device)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {arguments.threads} thread(s), "
          f"device {device}, batch {arguments.batch}, {arguments.steps} timed steps after 1 warm-up")
    print("| model | target GSD (m) | grid | tokens/sample | s/step | samples/s | tokens/s |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ramen-bench-") as folder:
        chips = Path(folder) / "sen1floods11"
        build_chips(load_chip_spec(SPEC), chips, stats=True)
        for size in arguments.sizes:
            for gsd in arguments.gsd:
                row = _time_case(size, chips, arguments.batch, gsd, arguments.steps, device)
                rows.append(row)
                print(f"| {size} | {gsd:g} | {row['grid']} | {row['tokens_per_sample']} | {row['seconds_per_step']:.3f} | "
                      f"{row['samples_per_s']:.1f} | {row['tokens_per_s']:.0f} |", flush=True)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
