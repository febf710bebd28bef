"""Fixed sinusoidal tables: 1-D encodings, the GSD-scaled 2-D position table, date tables.

Every table is computed in float32 with the same operation order as the reference. The
wavelength and position values are large (hundreds to thousands), so computing in float64
and casting would move the encoder outputs by up to about 3e-4.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """Encode positions as ``[sin(p·ω_0..ω_{dim/2-1}), cos(p·ω_0..ω_{dim/2-1})]``.

    ω_k = 1 / 10000^(k / (dim/2)). All sines come first, then all cosines.

    Args:
        dim: output width (even).
        positions: any shape; flattened.

    Returns:
        float32 tensor [positions.numel(), dim].
    """
    omega = torch.arange(dim // 2, dtype=torch.float32, device=positions.device)
    omega = omega / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1).to(torch.float32)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


@functools.lru_cache(maxsize=64)
def _position_table_cpu(dim: int, rows: int, cols: int, gsd: float) -> Tensor:
    gsd32 = torch.tensor(gsd, dtype=torch.float32)
    col_pos = torch.arange(cols, dtype=torch.float32) * gsd32
    row_pos = torch.arange(rows, dtype=torch.float32) * gsd32
    col_table = sincos_1d(dim // 2, col_pos)  # [cols, dim/2]
    row_table = sincos_1d(dim // 2, row_pos)  # [rows, dim/2]
    table = torch.cat(
        [
            col_table[None, :, :].expand(rows, cols, dim // 2),
            row_table[:, None, :].expand(rows, cols, dim // 2),
        ],
        dim=-1,
    )
    return table.reshape(rows * cols, dim).contiguous()


def position_table_2d(dim: int, rows: int, cols: int, gsd: float, device: torch.device | None = None) -> Tensor:
    """Return the Scale-MAE style 2-D table [rows·cols, dim] for a grid at ``gsd`` metres.

    Token (row, col) gets ``[sincos(dim/2, col·gsd), sincos(dim/2, row·gsd)]``: the first half
    encodes x (columns) in metres, the second half y (rows). Tables are computed on demand
    for any GSD and cached.
    """
    table = _position_table_cpu(int(dim), int(rows), int(cols), float(gsd))
    return table if device is None else table.to(device)


def ltae_date_table(dates: Tensor, dim_per_head: int, heads: int, period: float) -> Tensor:
    """Encode days of year as the L-TAE does: interleaved sin/cos, tiled once per head.

    Entry i of the per-head vector is ``sin(date / period^(2·floor(i/2)/d))`` for even i and
    the cosine of the same angle for odd i.

    Args:
        dates: [..., T] day of year.
        dim_per_head: d, the width of one head's slice.
        heads: number of times the d-vector is tiled.
        period: the base of the denominator (367 days in the reference).

    Returns:
        float32 [..., T, d·heads].
    """
    index = torch.arange(dim_per_head, device=dates.device).float()
    denom = torch.pow(torch.tensor(period, dtype=torch.float32), 2 * (index // 2) / dim_per_head)
    table = dates[..., None].to(torch.float32) / denom
    encoded = torch.empty_like(table)
    encoded[..., 0::2] = torch.sin(table[..., 0::2])
    encoded[..., 1::2] = torch.cos(table[..., 1::2])
    return torch.cat([encoded] * heads, dim=-1)
