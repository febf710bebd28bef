"""The RAMEN model: encoder, MAE decoder and their building blocks."""

from ramen_core.model.config import RamenConfig
from ramen_core.model.encoder import EncoderOutput, ModalityInput, RamenEncoder, check_modalities, grid_shape
from ramen_core.model.mae import MAEOutput, RamenDecoder, RamenMAE, random_masking, reconstruction_loss

__all__ = [
    "EncoderOutput",
    "MAEOutput",
    "ModalityInput",
    "RamenConfig",
    "RamenDecoder",
    "RamenEncoder",
    "RamenMAE",
    "check_modalities",
    "grid_shape",
    "random_masking",
    "reconstruction_loss",
]
