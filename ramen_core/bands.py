"""Physical description of one band, as the channel projectors of RAMEN consume it.

RAMEN embeds a channel from its physics, not from its position: an optical band from its
centre wavelength in nanometres, a radar band from its polarisation and orbit direction,
and an elevation band from what it measures (surface, terrain or slope).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ramen_core.errors import InputError

BandKind = Literal["optical", "radar", "elevation"]

POLARISATIONS = ("vv", "vh", "hv", "hh")
ORBITS = ("asc", "des")
ELEVATION_KINDS = ("dsm", "dtm", "slope")

# Centre wavelengths below this value are almost certainly given in micrometres.
_MIN_WAVELENGTH_NM = 100.0


@dataclass(frozen=True)
class BandSpec:
    """One channel: its name and the physical quantity that the model embeds.

    Attributes:
        name: band name as the sensor calls it (``B04``, ``vv``, ``dsm``).
        kind: ``optical``, ``radar`` or ``elevation``.
        wavelength_nm: centre wavelength in nanometres (optical bands only).
        polarisation: ``vv``, ``vh``, ``hv`` or ``hh`` (radar bands only).
        orbit: ``asc`` or ``des``, the orbit direction (radar bands only).
        elevation: ``dsm``, ``dtm`` or ``slope`` (elevation bands only).
    """

    name: str
    kind: BandKind
    wavelength_nm: float | None = None
    polarisation: str | None = None
    orbit: str | None = None
    elevation: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "optical":
            if self.wavelength_nm is None:
                raise InputError(f"optical band {self.name!r} needs a centre wavelength in nm")
            wavelength = float(self.wavelength_nm)
            if not wavelength > 0:
                raise InputError(
                    f"band {self.name!r}: wavelength {self.wavelength_nm!r} must be a positive number of nm"
                )
            if wavelength < _MIN_WAVELENGTH_NM:
                raise InputError(
                    f"band {self.name!r}: wavelength {self.wavelength_nm} looks like micrometres; "
                    f"give it in nanometres ({wavelength * 1000:g} nm)"
                )
        elif self.kind == "radar":
            if self.polarisation not in POLARISATIONS:
                raise InputError(
                    f"radar band {self.name!r}: unknown polarisation {self.polarisation!r}; "
                    f"use one of {', '.join(POLARISATIONS)}"
                )
            if self.orbit not in ORBITS:
                raise InputError(
                    f"radar band {self.name!r}: unknown orbit direction {self.orbit!r}; "
                    f"use one of {', '.join(ORBITS)}"
                )
        elif self.kind == "elevation":
            if self.elevation not in ELEVATION_KINDS:
                raise InputError(
                    f"elevation band {self.name!r}: unknown elevation kind {self.elevation!r}; "
                    f"use one of {', '.join(ELEVATION_KINDS)}"
                )
        else:
            raise InputError(
                f"band {self.name!r}: unknown kind {self.kind!r}; use optical, radar or elevation"
            )

    @property
    def radar_key(self) -> str:
        """Name of the learned radar vector, such as ``asc_vv``."""
        return f"{self.orbit}_{self.polarisation}"

    @classmethod
    def optical(cls, wavelength_nm: float, name: str | None = None) -> BandSpec:
        return cls(name=name or f"{wavelength_nm:g}nm", kind="optical", wavelength_nm=float(wavelength_nm))

    @classmethod
    def radar(cls, polarisation: str, orbit: str = "asc", name: str | None = None) -> BandSpec:
        polarisation = str(polarisation).lower()
        orbit = str(orbit).lower()[:3]
        return cls(name=name or polarisation, kind="radar", polarisation=polarisation, orbit=orbit)

    @classmethod
    def elev(cls, kind: str, name: str | None = None) -> BandSpec:
        kind = str(kind).lower()
        return cls(name=name or kind, kind="elevation", elevation=kind)

    @classmethod
    def parse(cls, token: str | float) -> BandSpec:
        """Build a band from a compact token: ``842`` (nm), ``asc_vv``, ``des_vh`` or ``dsm``."""
        if isinstance(token, (int, float)):
            return cls.optical(float(token))
        text = str(token).strip().lower()
        try:
            return cls.optical(float(text.removesuffix("nm")))
        except ValueError:
            pass
        if "_" in text:
            orbit, _, polarisation = text.partition("_")
            return cls.radar(polarisation, orbit, name=text)
        if text in ELEVATION_KINDS:
            return cls.elev(text)
        raise InputError(
            f"cannot read band {token!r}: give a wavelength in nm (842), a radar band "
            f"(asc_vv, des_vh) or an elevation kind (dsm, dtm, slope)"
        )
