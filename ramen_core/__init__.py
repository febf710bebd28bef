"""ramen: run the RAMEN Earth-observation encoder on real imagery."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ramen-eo")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
