"""Throughput of the ViT-Base encoder on CPU, with and without the exact rewrites.

Prints one row per case: tokens, a FLOP estimate (a multiply-add counts as two FLOPs),
tokens per second of the whole forward pass, the time of the steps before the transformer
(where the rewrites act) for the plain and the rewritten path, and the maximum absolute
difference of their outputs. Weights are random: speed does not depend on their values.

Usage: python benchmarks/bench_encoder.py [--threads N] [--repeats R] [--size tiny|base]
"""

from __future__ import annotations

import argparse
import time

import torch

from ramen_core.bands import BandSpec
from ramen_core.model import ModalityInput, RamenConfig, RamenEncoder
from ramen_core.model.flops import ModalityShape, estimate_encoder_flops

S2_NM = [490, 560, 665, 705, 740, 783, 842, 865, 1610, 2190]
AERIAL_NM = [640, 560, 480, 810]


def _modality(name, nm, dates, size, gsd):
    data = torch.randn(1, dates, len(nm), size, size)
    day_of_year = torch.linspace(10, 350, dates).to(torch.int32)[None]
    return ModalityInput(name, data, [BandSpec.optical(v) for v in nm], gsd, dates=day_of_year)


def cases():
    # Windows of 256 to 1024 tokens: on 2 CPU cores a ViT-Base forward then takes seconds.
    for size, target in ((32, 10.0), (64, 20.0), (64, 40.0), (128, 40.0), (256, 80.0)):
        yield f"s2 {size}px@10m -> {target:g} m", [_modality("s2", S2_NM, 1, size, 10.0)], target
    yield "s2 10 dates 64px@10m -> 40 m", [_modality("s2", S2_NM, 10, 64, 10.0)], 40.0
    # 0.2 m aerial at 10 m: 50x fewer pixels per side. 800 px (160 m) keeps the plain path,
    # which projects all 640,000 pixels to 768 channels (about 2 GB), within memory.
    yield "aerial 800px@0.2m -> 10 m", [_modality("aerial", AERIAL_NM, 1, 800, 0.2)], 10.0


def _time(encoder, modalities, target, repeats):
    """Return (seconds per forward, seconds per pre-transformer pass, tokens)."""
    with torch.inference_mode():
        out = encoder(modalities, target)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            out = encoder(modalities, target)
        full = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            encoder.prepare_tokens(modalities, target)
        prepare = (time.perf_counter() - start) / repeats
        return full, prepare, out.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = RamenConfig.preset(args.size)
    encoder = RamenEncoder(config).eval()
    print(f"# RAMEN {args.size} encoder, torch {torch.__version__}, {args.threads} threads, "
          f"{args.repeats} repeats; GFLOP counts a multiply-add as 2 FLOPs")
    header = f"{'case':34s} {'tokens':>7s} {'GFLOP plain':>11s} {'GFLOP fast':>10s} " \
             f"{'tok/s plain':>11s} {'tok/s fast':>10s} {'pre-ViT ms plain':>16s} {'pre-ViT ms fast':>15s} {'max|diff|':>9s}"
    print(header)
    for name, modalities, target in cases():
        shapes = [ModalityShape(m.data.shape[1], m.data.shape[2], m.data.shape[3], m.data.shape[4], m.gsd) for m in modalities]
        plain_flops = estimate_encoder_flops(config, shapes, target, exact_rewrites=False)
        fast_flops = estimate_encoder_flops(config, shapes, target, exact_rewrites=True)
        encoder.exact_rewrites = False
        plain_s, plain_pre, plain_tokens = _time(encoder, modalities, target, args.repeats)
        encoder.exact_rewrites = True
        fast_s, fast_pre, fast_tokens = _time(encoder, modalities, target, args.repeats)
        tokens = plain_tokens.shape[1]
        diff = (plain_tokens - fast_tokens).abs().max().item()
        print(f"{name:34s} {tokens:7d} {plain_flops.total / 1e9:11.2f} {fast_flops.total / 1e9:10.2f} "
              f"{tokens / plain_s:11.0f} {tokens / fast_s:10.0f} {plain_pre * 1e3:16.0f} {fast_pre * 1e3:15.0f} "
              f"{diff:9.1e}", flush=True)


if __name__ == "__main__":
    main()
