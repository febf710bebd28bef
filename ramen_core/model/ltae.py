"""Lightweight temporal attention encoder (L-TAE) that collapses dates per pixel.

The module follows the L-TAE of Garnot & Landrieu (2020) as the RAMEN reference configures
it: a learned query per head, keys from a linear layer, no value projection (head h averages
its own slice of channels), and a BatchNorm/ReLU MLP at the end.

Validity masks extend the reference: masked dates get no attention weight and are left out
of the GroupNorm statistics. The per-date input projection (``inconv``) runs on every date
because it is pointwise, and its BatchNorm uses running statistics, so masked dates do not
affect valid ones. With every date valid the result equals the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ramen_core.model.sincos import ltae_date_table


class _QueryAttention(nn.Module):
    """One learned query per head over a sequence of dates."""

    def __init__(self, heads: int, key_dim: int, in_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = key_dim
        self.Q = nn.Parameter(torch.zeros(heads, key_dim))
        self.fc1_k = nn.Linear(in_dim, heads * key_dim)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        # x: [N, T, D]; valid: [N, T] bool or None.
        n, t, d = x.shape
        keys = self.fc1_k(x).view(n, t, self.heads, self.key_dim)
        scores = torch.einsum("hk,nthk->hnt", self.Q, keys) / self.key_dim**0.5  # [heads, N, T]
        if valid is not None:
            scores = scores.masked_fill(~valid[None], float("-inf"))
            attn = torch.softmax(scores, dim=-1)
            attn = torch.nan_to_num(attn, nan=0.0)  # pixels with no valid date
        else:
            attn = torch.softmax(scores, dim=-1)
        values = x.view(n, t, self.heads, d // self.heads)
        out = torch.einsum("hnt,nthc->nhc", attn, values)
        return out.reshape(n, d)


def _masked_group_norm(x: Tensor, groups: int, valid: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm over channels × valid dates. x: [N, T, D]; valid: [N, T] bool."""
    n, t, d = x.shape
    grouped = x.view(n, t, groups, d // groups)
    weight = valid.to(x.dtype)[:, :, None, None]
    count = (weight.sum(dim=1, keepdim=True) * (d // groups)).clamp(min=1.0)
    mean = (grouped * weight).sum(dim=(1, 3), keepdim=True) / count
    var = (((grouped - mean) ** 2) * weight).sum(dim=(1, 3), keepdim=True) / count
    normed = ((grouped - mean) / torch.sqrt(var + norm.eps)).view(n, t, d)
    return normed * norm.weight + norm.bias


class LTAE(nn.Module):
    """Collapse a time series of feature maps [B, T, D, H, W] into one map [B, D, H, W].

    Args:
        dim: channel width D.
        heads: attention heads (16 in the reference).
        key_dim: key size per head (16 in the reference).
        period: period of the date encoding in days (367 in the reference).
    """

    def __init__(self, dim: int, heads: int = 16, key_dim: int = 16, period: float = 367.0) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.period = period
        self.inconv = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU())
        self.in_norm = nn.GroupNorm(heads, dim)
        self.attention_heads = _QueryAttention(heads, key_dim, dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(),
            nn.Linear(dim, 2 * dim), nn.BatchNorm1d(2 * dim), nn.ReLU(),
            nn.Linear(2 * dim, dim), nn.BatchNorm1d(dim), nn.ReLU(),
        )

    def forward(self, x: Tensor, dates: Tensor, valid: Tensor | None = None) -> Tensor:
        """Run the temporal attention.

        Args:
            x: [B, T, D, H, W] feature maps.
            dates: [B, T] day of year.
            valid: optional [B, T, H, W] bool, False for dates to leave out at a pixel.

        Returns:
            [B, D, H, W]. Pixels without a valid date get the MLP's response to a zero
            attention output; callers flag them through the validity mask.
        """
        b, t, d, h, w = x.shape
        seq = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, d)
        pixel_valid = None
        if valid is not None and not bool(valid.all()):
            pixel_valid = valid.permute(0, 2, 3, 1).reshape(b * h * w, t)

        seq = self.inconv(seq.reshape(-1, d)).view(b * h * w, t, d)
        if pixel_valid is None:
            seq = self.in_norm(seq.transpose(1, 2)).transpose(1, 2)
        else:
            seq = _masked_group_norm(seq, self.heads, pixel_valid, self.in_norm)

        table = ltae_date_table(dates, d // self.heads, self.heads, self.period).to(seq.dtype)  # [B, T, D]
        table = table[:, None, None].expand(b, h, w, t, d).reshape(b * h * w, t, d)
        seq = seq + table

        out = self.attention_heads(seq, pixel_valid)
        out = self.mlp(out)
        return out.view(b, h, w, d).permute(0, 3, 1, 2)
