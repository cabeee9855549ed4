"""Factory strings and configs -> codec objects.

Specs, in the spirit of ``faiss.index_factory``:
    ``flat``                 exact float32
    ``tq1`` … ``tq8``        TurboQuant_mse, b bits per coordinate
    ``tq2-prod`` … ``tq8-prod``  TurboQuant_prod, b-1 MSE bits + 1 QJL bit per coordinate
    ``tq{m}+qjl``            the same as ``tq{m+1}-prod``
"""

from __future__ import annotations

import re

from vecstore.codecs.base import Codec
from vecstore.codecs.flat import FlatCodec
from vecstore.codecs.turboquant import TurboQuantMSE, TurboQuantProd
from vecstore.errors import InvalidArgument

_TQ = re.compile(r"tq(\d)")
_TQ_PROD = re.compile(r"tq(\d)-prod")
_TQ_QJL = re.compile(r"tq(\d)\+qjl")

_BY_CONFIG_NAME = {
    "flat": FlatCodec,
    "tq": TurboQuantMSE,
    "tq-prod": TurboQuantProd,
}

ROTATIONS = ("auto", "dense", "hadamard")


def available_specs() -> list[str]:
    """Every spec ``make_codec`` accepts, canonical names only."""
    return ["flat"] + [f"tq{b}" for b in range(1, 9)] + [f"tq{b}-prod" for b in range(2, 9)]


def make_codec(spec: str, *, dim: int, seed: int = 0, rotation: str = "auto") -> Codec:
    """Build the codec named by ``spec`` for vectors of dimension ``dim``.

    ``seed`` fixes the random rotation and sketch; ``rotation`` ("auto", "dense",
    "hadamard") applies to TurboQuant codecs.
    """
    if not isinstance(spec, str):
        raise InvalidArgument(f"codec spec must be a string, got {type(spec).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise InvalidArgument(f"dim must be an integer >= 2, got {dim!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidArgument(f"seed must be a non-negative integer, got {seed!r}")
    if rotation not in ROTATIONS:
        raise InvalidArgument(f"unknown rotation {rotation!r}; expected one of {ROTATIONS}")
    name = spec.strip().lower()
    if name == "flat":
        return FlatCodec(dim)
    if match := _TQ.fullmatch(name):
        bits = int(match[1])
        if 1 <= bits <= 8:
            return TurboQuantMSE(dim, bits, seed, rotation)
    if match := _TQ_PROD.fullmatch(name):
        bits = int(match[1])
        if 2 <= bits <= 8:
            return TurboQuantProd(dim, bits, seed, rotation)
    if match := _TQ_QJL.fullmatch(name):
        bits = int(match[1]) + 1
        if 2 <= bits <= 8:
            return TurboQuantProd(dim, bits, seed, rotation)
    raise InvalidArgument(
        f"unknown codec spec {spec!r}; known: {', '.join(available_specs())}, tq{{m}}+qjl"
    )


def codec_from_config(config: dict) -> Codec:
    """Rebuild a codec from its ``to_config()`` dict."""
    try:
        cls = _BY_CONFIG_NAME[config["codec"]]
    except (KeyError, TypeError) as exc:
        raise InvalidArgument(f"not a codec config: {config!r:.200}") from exc
    return cls.from_config(config)
