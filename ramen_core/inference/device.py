"""Device and precision choices for inference."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from ramen_core.errors import InputError

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:1``) into a torch device that exists here.

    ``auto`` picks CUDA, then MPS, then the CPU.

    Raises:
        InputError: an unknown device, or one this machine does not have.
    """
    text = str(device).lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = text.split(":")[0]
    if kind not in DEVICES:
        raise InputError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but CUDA is not available here; use --device cpu or auto")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise InputError("device 'mps' requested but MPS is not available here; use --device cpu or auto")
    return torch.device(text)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto|fp32|bf16`` into the precision used: ``auto`` is bf16 on CUDA, fp32 elsewhere.

    Raises:
        InputError: an unknown precision, or bf16 on a device other than CUDA.
    """
    text = str(precision).lower()
    if text not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if text == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if text == "bf16" and device.type != "cuda":
        raise InputError(f"bf16 autocast is only supported on CUDA here, not on {device.type}; use --precision fp32")
    return text


# NOTE: the tests run on CPU only; the CUDA (bf16 autocast) and MPS paths have not been run there.
@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on CUDA when ``precision`` is ``bf16``; a no-op otherwise."""
    if precision == "bf16" and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
