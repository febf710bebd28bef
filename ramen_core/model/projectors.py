"""Channel-conditioned projectors: one [C, D] matrix per modality, built from band physics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ramen_core.bands import ELEVATION_KINDS, ORBITS, POLARISATIONS, BandSpec
from ramen_core.errors import InputError
from ramen_core.model.sincos import sincos_1d

RADAR_KEYS = tuple(f"{orbit}_{pol}" for orbit in ORBITS for pol in ("vv", "vh", "hv", "hh"))
assert set(RADAR_KEYS) == {f"{o}_{p}" for o in ORBITS for p in POLARISATIONS}


def _projector_mlp(dim: int) -> nn.Sequential:
    # Indices 0, 2 and 3 match the key layout of the official checkpoints.
    return nn.Sequential(
        nn.Linear(dim, 2 * dim),
        nn.GELU(),
        nn.Linear(2 * dim, dim),
        nn.LayerNorm(dim, eps=1e-5),
    )


class SpectralProjector(nn.Module):
    """Optical bands: sin-cos encoding of the centre wavelength in nm, then an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = _projector_mlp(dim)

    def forward(self, bands: Sequence[BandSpec]) -> Tensor:
        wavelengths = torch.tensor(
            [float(band.wavelength_nm) for band in bands],  # type: ignore[arg-type]
            dtype=torch.float32,
            device=self.mlp[0].weight.device,
        )
        encoding = sincos_1d(self.dim, wavelengths).to(self.mlp[0].weight.dtype)
        return self.mlp(encoding)


class RadarProjector(nn.Module):
    """SAR bands: a learned vector per orbit direction and polarisation, then an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        for key in RADAR_KEYS:
            setattr(self, f"{key}_param", nn.Parameter(torch.zeros(dim)))
        self.mlp = _projector_mlp(dim)

    def forward(self, bands: Sequence[BandSpec]) -> Tensor:
        rows = [getattr(self, f"{band.radar_key}_param") for band in bands]
        return self.mlp(torch.stack(rows))


class ElevationProjector(nn.Module):
    """Elevation bands: a learned vector per kind (DSM, DTM, slope), then an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        for kind in ELEVATION_KINDS:
            setattr(self, f"{kind}_param", nn.Parameter(torch.zeros(dim)))
        self.mlp = _projector_mlp(dim)

    def forward(self, bands: Sequence[BandSpec]) -> Tensor:
        rows = [getattr(self, f"{band.elevation}_param") for band in bands]
        return self.mlp(torch.stack(rows))


def modality_kind(name: str, bands: Sequence[BandSpec]) -> str:
    """Return the single kind shared by all bands of a modality, or raise."""
    kinds = {band.kind for band in bands}
    if not kinds:
        raise InputError(f"modality {name!r} has no bands; give at least one channel")
    if len(kinds) != 1:
        raise InputError(
            f"modality {name!r} mixes band kinds {sorted(kinds)}; split it into one modality per kind"
        )
    return kinds.pop()


def build_projectors(module: nn.Module, dim: int, radar: bool, elevation: bool) -> None:
    """Attach the projectors to ``module`` under their official attribute names."""
    module.spectral_projector = SpectralProjector(dim)
    if radar:
        module.radar_projector = RadarProjector(dim)
    if elevation:
        module.dem_projector = ElevationProjector(dim)


def channel_matrix(module: nn.Module, name: str, bands: Sequence[BandSpec]) -> Tensor:
    """Return the [C, D] channel matrix of a modality from the projectors on ``module``."""
    kind = modality_kind(name, bands)
    attribute = {"optical": "spectral_projector", "radar": "radar_projector", "elevation": "dem_projector"}[kind]
    projector = getattr(module, attribute, None)
    if projector is None:
        raise InputError(
            f"modality {name!r} has {kind} bands, but this model has no {kind} projector; "
            f"use weights trained with {kind} data"
        )
    return projector(bands)
