"""The adjustable spatial resampler: bilinear interpolation plus gated pointwise experts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramen_core.model.sincos import sincos_1d


def interpolate_by_scale(x: Tensor, scale: float) -> Tensor:
    """Bilinearly resample ``x`` [N, C, H, W] by a scale factor.

    The output size is floor(size·scale) and the source coordinate of output pixel i is
    (i + 0.5)/scale − 0.5, as torch computes it when given ``scale_factor`` (not a size).
    No corner alignment, no antialiasing. A scale of exactly 1 returns ``x`` unchanged.
    """
    if scale == 1.0:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``x`` [N, C, H, W] to exactly ``size``, if it differs."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ScaleResampler(nn.Module):
    """Resample a feature map by a scale factor, then refine it with a mixture of experts.

    The output is ``y + Σ_i w_i·Conv1x1_i(y)`` where ``y`` is the interpolated map and the
    gate ``w = softmax(MLP(sincos(ln s)) / temperature)`` depends only on the scale s.

    With ``fused_experts`` (the default) the experts, which are linear, are merged into one
    1×1 convolution whose kernel is the gate-weighted sum of the expert kernels. This gives
    the same result up to float rounding at a quarter of the cost.
    """

    def __init__(self, dim: int, num_experts: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.num_experts = num_experts
        self.experts = nn.ModuleList(nn.Conv2d(dim, dim, kernel_size=1) for _ in range(num_experts))
        self.mlp = nn.Sequential(nn.Linear(dim, dim // 4), nn.GELU(), nn.Linear(dim // 4, num_experts))
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.fused_experts = True

    def gate(self, scale: float) -> Tensor:
        """Return the expert weights [num_experts] for a scale factor."""
        log_scale = torch.log(torch.tensor([scale], dtype=torch.float32, device=self.temperature.device))
        encoding = sincos_1d(self.dim, log_scale).to(self.temperature.dtype)
        logits = self.mlp(encoding)
        return torch.softmax(logits / torch.clamp(self.temperature, min=1e-3), dim=-1)[0]

    def refine(self, y: Tensor, scale: float) -> Tensor:
        """Apply the gated experts to a map that is already at the output grid."""
        weights = self.gate(scale)
        if self.fused_experts:
            kernel = torch.einsum("e,eoi->oi", weights, torch.stack([e.weight[:, :, 0, 0] for e in self.experts]))
            bias = torch.einsum("e,eo->o", weights, torch.stack([e.bias for e in self.experts]))
            return y + F.conv2d(y, kernel.to(y.dtype)[:, :, None, None], bias.to(y.dtype))
        out = y
        for weight, expert in zip(weights, self.experts):
            out = out + weight * expert(y)
        return out

    def forward(self, x: Tensor, scale: float) -> Tensor:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"resampler scale must be a positive finite number, got {scale!r}")
        return self.refine(interpolate_by_scale(x, scale), scale)
