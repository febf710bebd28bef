"""The window task of ``ramen embed``: read and normalise windows, encode them, fuse modalities."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ramen_core.errors import InputError
from ramen_core.inference.device import autocast, resolve_device
from ramen_core.inference.normalization import Normalization
from ramen_core.inference.run import BatchResult
from ramen_core.inference.sources import pixels_per_token
from ramen_core.inference.tiling import TargetGrid, Window
from ramen_core.model import ModalityInput, RamenEncoder

logger = logging.getLogger(__name__)

FUSE_MODES = ("mean", "concat")
POOLING_MODES = ("mean", "cls")

@dataclass
class WindowInputs:
    """The normalised inputs of a batch of windows.

    Attributes:
        data: per modality, [B, T, C, h, w] float32 with 0 where invalid.
        valid: per modality, [B, T, h, w] bool.
        has_data: [B] bool, whether any modality has a valid pixel in the window.
    """

    data: list[np.ndarray]
    valid: list[np.ndarray]
    has_data: np.ndarray


@dataclass
class EmbeddingTask:
    """Reader and encoder for the windows of one ``embed`` run.

    Attributes:
        encoder: the loaded encoder, in eval mode, on ``device``.
        modalities: the inputs (file or cube modalities), in model order.
        grid: the target grid.
        normalization: per-band statistics.
        layer: block whose features are written (1 to depth).
        fuse: ``mean`` (D channels, mean over the modalities valid at a pixel) or
            ``concat`` (M·D channels, modality by modality).
        pooling: ``mean`` or ``cls`` for per-window vectors, or None for none.
        device: torch device.
        precision: ``fp32`` or ``bf16``.
    """

    encoder: RamenEncoder
    modalities: Sequence[Any]
    grid: TargetGrid
    normalization: Normalization
    layer: int
    fuse: str = "mean"
    pooling: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.fuse not in FUSE_MODES:
            raise InputError(f"fuse {self.fuse!r} must be one of {', '.join(FUSE_MODES)}")
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            raise InputError(f"pooling {self.pooling!r} must be one of {', '.join(POOLING_MODES)}")
        dim = self.encoder.config.embed_dim
        count = len(self.modalities)
        self.channels = dim if self.fuse == "mean" else dim * count
        self.groups = 1 if self.fuse == "mean" else count
        self._statistics = [self.normalization.arrays(m.name, m.bands) for m in self.modalities]
        self._specs = [m.band_specs() for m in self.modalities]
        self._gsds = [self.grid.gsd / pixels_per_token(m.gsd, self.grid.gsd) for m in self.modalities]
        self._day_of_year = [
            np.array([day.timetuple().tm_yday if day is not None else 1 for day in m.dates], dtype=np.int64)
            for m in self.modalities
        ]

    # ------------------------------------------------------------------ reading
    def read(self, windows: Sequence[Window]) -> WindowInputs:
        count = len(windows)
        data: list[np.ndarray] = []
        valid: list[np.ndarray] = []
        has_data = np.zeros(count, dtype=bool)
        for index, modality in enumerate(self.modalities):
            mean, std = self._statistics[index]
            for position, window in enumerate(windows):
                result = modality.read_window(self.grid, window.row, window.col, window.height, window.width)
                if position == 0:
                    data.append(np.zeros((count, *result.data.shape), dtype=np.float32))
                    valid.append(np.zeros((count, *result.valid.shape), dtype=bool))
                valid[index][position] = result.valid
                if not result.valid.any():
                    continue  # left at zero and skipped by run(), unless another modality has data
                has_data[position] = True
                normalised = (result.data - mean[None, :, None, None]) / std[None, :, None, None]
                usable = result.valid[:, None] & np.isfinite(normalised)
                data[index][position] = np.where(usable, normalised, np.float32(0.0))
        return WindowInputs(data, valid, has_data)

    # ------------------------------------------------------------------ encoding
    def run(self, windows: Sequence[Window], inputs: WindowInputs) -> BatchResult:
        count = len(windows)
        height, width = windows[0].height, windows[0].width
        values = np.zeros((count, self.channels, height, width), dtype=np.float32)
        valid = np.zeros((count, self.groups, height, width), dtype=bool)
        extras: list[dict[str, np.ndarray] | None] = [None] * count
        selected = np.flatnonzero(inputs.has_data)
        if selected.size == 0:
            return BatchResult(values, valid, extras, 0)

        modalities = []
        for index, modality in enumerate(self.modalities):
            data = torch.from_numpy(inputs.data[index][selected]).to(self.device)
            mask = torch.from_numpy(inputs.valid[index][selected]).to(self.device)
            days = self._day_of_year[index]
            dates = torch.from_numpy(np.broadcast_to(days, (selected.size, days.size)).copy()).to(self.device)
            modalities.append(ModalityInput(
                name=modality.name, data=data, bands=self._specs[index],
                gsd=self._gsds[index], dates=dates, valid=mask,
            ))
        with torch.inference_mode(), autocast(self.device, self.precision):
            output = self.encoder(modalities, self.grid.gsd, blocks=(self.layer,))
        maps = output.maps(self.layer).float()  # [b, M, D, rows, cols]
        token_valid = output.valid  # [b, M, rows, cols]
        if tuple(maps.shape[-2:]) != (height, width):
            raise AssertionError(f"encoder grid {tuple(maps.shape[-2:])} differs from the window {(height, width)}")

        weights = token_valid[:, :, None].to(maps.dtype)
        if self.fuse == "mean":
            counts = weights.sum(dim=1)
            fused = (maps * weights).sum(dim=1) / counts.clamp(min=1.0)
            fused_valid = token_valid.any(dim=1, keepdim=True)
        else:
            fused = maps.flatten(1, 2)
            fused_valid = token_valid
        values[selected] = fused.cpu().numpy()
        valid[selected] = fused_valid.cpu().numpy()

        if self.pooling is not None:
            pooled = self._pool(output, fused, fused_valid)
            fraction = token_valid.any(dim=1).float().mean(dim=(1, 2)).cpu().numpy()
            for position, index in enumerate(selected):
                extras[index] = {"vector": pooled[position], "valid_fraction": np.float32(fraction[position])}
        tokens = int(selected.size) * (1 + len(self.modalities) * height * width)
        return BatchResult(values, valid, extras, tokens)

    def _pool(self, output: Any, fused: torch.Tensor, fused_valid: torch.Tensor) -> np.ndarray:
        """Pool one vector per window: the mean of its valid tokens, or its CLS token."""
        if self.pooling == "cls":
            return output.cls(self.layer).float().cpu().numpy()
        groups = fused_valid.shape[1]
        per_group = fused.shape[1] // groups
        weights = fused_valid.float()  # [b, G, rows, cols]
        grouped = fused.reshape(fused.shape[0], groups, per_group, *fused.shape[-2:])
        sums = (grouped * weights[:, :, None]).sum(dim=(-2, -1))
        counts = weights.sum(dim=(-2, -1)).clamp(min=1.0)[:, :, None]
        return (sums / counts).flatten(1).cpu().numpy()


@dataclass
class EmbeddingTaskFactory:
    """Builds an :class:`EmbeddingTask`, loading the weights; picklable for Dask workers.

    Attributes:
        key: identity of the model, inputs and options (equal keys build equal tasks).
        weights: weights path or hub URI.
        trust_checkpoint: allow pickled torch checkpoints.
        modalities: the inputs.
        grid: the target grid.
        normalization: per-band statistics.
        layer: block to write.
        fuse: modality fusion.
        pooling: per-window vector pooling, or None.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``, resolved where the task is built.
        precision: ``fp32`` or ``bf16``.
    """

    key: str
    weights: str
    trust_checkpoint: bool
    modalities: Sequence[Any]
    grid: TargetGrid
    normalization: Normalization
    layer: int
    fuse: str
    pooling: str | None
    device: str
    precision: str
    encoder: RamenEncoder | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["encoder"] = None  # workers load the weights themselves, once
        return state

    def __call__(self) -> EmbeddingTask:
        from ramen_core.weights import build_encoder, load_weights

        device = resolve_device(self.device)
        precision = self.precision if device.type == "cuda" else "fp32"
        encoder = self.encoder
        if encoder is None:
            encoder = build_encoder(load_weights(self.weights, self.trust_checkpoint), device)
        else:
            encoder = encoder.to(device).eval()
        return EmbeddingTask(
            encoder=encoder, modalities=self.modalities, grid=self.grid, normalization=self.normalization,
            layer=self.layer, fuse=self.fuse, pooling=self.pooling, device=device, precision=precision,
        )
