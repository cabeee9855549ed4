"""Vector codecs: one module per codec behind the ``Codec`` protocol."""

from vecstore.codecs.base import Codec, bits_per_dim
from vecstore.codecs.flat import FlatCodec
from vecstore.codecs.registry import available_specs, codec_from_config, make_codec
from vecstore.codecs.turboquant import TurboQuantMSE, TurboQuantProd

__all__ = [
    "Codec",
    "FlatCodec",
    "TurboQuantMSE",
    "TurboQuantProd",
    "available_specs",
    "bits_per_dim",
    "codec_from_config",
    "make_codec",
]
