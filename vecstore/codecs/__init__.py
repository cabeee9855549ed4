"""Vector codecs: one module per codec behind the ``Codec`` protocol."""

from vecstore.codecs.base import Codec, bits_per_dim
from vecstore.codecs.flat import FlatCodec
from vecstore.codecs.fp8 import MinifloatCodec
from vecstore.codecs.mib import MIBCodec
from vecstore.codecs.pca import PCACodec
from vecstore.codecs.pq import ProductQuantizer
from vecstore.codecs.registry import available_specs, codec_from_config, make_codec
from vecstore.codecs.turboquant import TurboQuantMSE, TurboQuantProd
from vecstore.codecs.turboquant_corrected import TurboQuantCorrected

__all__ = [
    "Codec",
    "FlatCodec",
    "MIBCodec",
    "MinifloatCodec",
    "PCACodec",
    "ProductQuantizer",
    "TurboQuantCorrected",
    "TurboQuantMSE",
    "TurboQuantProd",
    "available_specs",
    "bits_per_dim",
    "codec_from_config",
    "make_codec",
]
