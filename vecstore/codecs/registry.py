"""Factory strings and configs -> codec objects.

Specs, in the spirit of ``faiss.index_factory``:
    ``flat``                 exact float32
    ``tq1`` … ``tq8``        TurboQuant_mse, b bits per coordinate
    ``tq2-prod`` … ``tq8-prod``  TurboQuant_prod, b-1 MSE bits + 1 QJL bit per coordinate
    ``tq{m}+qjl``            the same as ``tq{m+1}-prod``
    ``tq1c`` … ``tq8c``      TurboQuant_mse plus a stored <y, y_mse> that corrects the
                             inner-product estimate (2 bytes more than ``tq{b}``)

Baselines (``pq``, ``mib`` and the PCA codecs learn from data: call ``train`` first):
    ``pq{M}x{nbits}``        product quantization, M sub-spaces (d % M == 0), nbits 1..8
    ``mib``, ``mib{b}``      per-dimension quantile binarization, b bits per dimension
    ``mib-hamming``          ``mib`` scored by Hamming distance (``mib-asym`` = ``mib``)
    ``fp16``, ``fp8``        float16, or E4M3 with a float32 scale per vector
    ``fp8-pca{r}``, ``fp16-pca{r}``  PCA to r <= d dimensions, then fp8 or fp16
"""

from __future__ import annotations

import re

from vecstore.codecs.base import Codec
from vecstore.codecs.flat import FlatCodec
from vecstore.codecs.fp8 import MinifloatCodec
from vecstore.codecs.mib import MIBCodec
from vecstore.codecs.pca import PCACodec
from vecstore.codecs.pq import ProductQuantizer
from vecstore.codecs.turboquant import TurboQuantMSE, TurboQuantProd
from vecstore.codecs.turboquant_corrected import TurboQuantCorrected
from vecstore.errors import InvalidArgument

_TQ = re.compile(r"tq(\d)")
_TQ_PROD = re.compile(r"tq(\d)-prod")
_TQ_QJL = re.compile(r"tq(\d)\+qjl")
_TQ_CORRECTED = re.compile(r"tq(\d)c")
_PQ = re.compile(r"pq(\d+)x(\d+)")
_MIB = re.compile(r"mib(\d)?(?:-(hamming|asym))?")
_MINIFLOAT = re.compile(r"(fp8|fp16)")
_PCA = re.compile(r"(fp8|fp16)-pca(\d+)")

_BY_CONFIG_NAME = {
    "flat": FlatCodec,
    "tq": TurboQuantMSE,
    "tq-prod": TurboQuantProd,
    "tq-corrected": TurboQuantCorrected,
    "pq": ProductQuantizer,
    "mib": MIBCodec,
    "minifloat": MinifloatCodec,
    "pca": PCACodec,
}

ROTATIONS = ("auto", "dense", "hadamard", "none")
# The largest vector dimension a codec takes.
MAX_DIM = 16384
# Codecs holding a (d, d) matrix take at most this dimension (4096^2 float64: 128 MiB).
MAX_MATRIX_DIM = 4096
_MIB_SCORINGS = {None: "asymmetric", "asym": "asymmetric", "hamming": "hamming"}

# Representative baselines, sized for d = 384 (each pair of rows spends equal bytes):
# 24, 48 and 96 bytes of PQ codes, 1, 2 and 4 bits per dimension of MIB, minifloats with
# and without PCA.
BASELINE_SPECS = (
    "pq24x8", "pq48x4", "pq48x8", "pq96x4", "pq96x8", "pq192x4",
    "mib", "mib-hamming", "mib2", "mib4",
    "fp16", "fp8", "fp8-pca96", "fp8-pca128", "fp8-pca192", "fp16-pca192",
)


def _fits(spec: str, dim: int) -> bool:
    """Whether ``spec`` from available_specs() builds a codec for ``dim``."""
    if match := _PQ.fullmatch(spec):
        return dim % int(match[1]) == 0
    if match := _PCA.fullmatch(spec):
        return int(match[2]) < dim
    return dim >= 2


def available_specs(dim: int | None = None, *, baselines: bool = False) -> list[str]:
    """Canonical specs ``make_codec`` accepts.

    Without arguments: the data-oblivious TurboQuant family and ``flat``, valid for every
    dimension. ``baselines=True`` adds a representative set of the baseline codecs
    (BASELINE_SPECS, chosen for d = 384). ``dim`` keeps only the specs that fit it: PQ needs
    d % M == 0, PCA r < d.
    """
    specs = ["flat"] + [f"tq{b}" for b in range(1, 9)] + [f"tq{b}-prod" for b in range(2, 9)]
    specs += [f"tq{b}c" for b in range(1, 9)]
    if baselines:
        specs += list(BASELINE_SPECS)
    if dim is None:
        return specs
    return [spec for spec in specs if _fits(spec, dim)]


def _check_matrix_dim(name: str, dim: int, rotation: str) -> None:
    """InvalidArgument when the codec ``name`` would hold a (d, d) matrix above
    MAX_MATRIX_DIM: a dense rotation, the QJL sketch or a PCA basis."""
    if dim <= MAX_MATRIX_DIM:
        return
    if rotation == "dense" and name.startswith(("tq", "mib")):
        held = "a dense rotation (rotation='hadamard' has none)"
    elif _TQ_PROD.fullmatch(name) or _TQ_QJL.fullmatch(name):
        held = "the QJL sketch"
    elif _PCA.fullmatch(name):
        held = "a PCA basis"
    else:
        return
    raise InvalidArgument(f"codec {name!r:.40} would hold {held}, a (d, d) matrix: such "
                          f"codecs take d <= {MAX_MATRIX_DIM}, got d = {dim}")


def make_codec(spec: str, *, dim: int, seed: int = 0, rotation: str = "auto") -> Codec:
    """Build the codec named by ``spec`` for vectors of dimension ``dim``.

    ``seed`` fixes the random rotation and sketch, and for trained codecs the training
    sample and k-means seeding. ``rotation`` ("auto", "dense", "hadamard") applies to
    TurboQuant and MIB codecs; "none" (MIB only) leaves the coordinates as they are.
    """
    if not isinstance(spec, str):
        raise InvalidArgument(f"codec spec must be a string, got {type(spec).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 2 <= dim <= MAX_DIM:
        raise InvalidArgument(f"dim must be an integer in 2..{MAX_DIM}, got {dim!r:.40}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidArgument(f"seed must be a non-negative integer, got {seed!r}")
    if rotation not in ROTATIONS:
        raise InvalidArgument(f"unknown rotation {rotation!r}; expected one of {ROTATIONS}")
    name = spec.strip().lower()
    _check_matrix_dim(name, dim, rotation)
    if name == "flat":
        return FlatCodec(dim)
    if name.startswith("tq") and rotation == "none":
        raise InvalidArgument("TurboQuant needs a rotation: 'auto', 'dense' or 'hadamard'")
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
    if match := _TQ_CORRECTED.fullmatch(name):
        bits = int(match[1])
        if 1 <= bits <= 8:
            return TurboQuantCorrected(dim, bits, seed, rotation)
    if match := _PQ.fullmatch(name):
        return ProductQuantizer(dim, int(match[1]), int(match[2]), seed)
    if match := _MIB.fullmatch(name):
        return MIBCodec(dim, int(match[1] or 1), seed, scoring=_MIB_SCORINGS[match[2]],
                        rotation=rotation)
    if match := _MINIFLOAT.fullmatch(name):
        return MinifloatCodec(dim, match[1])
    if match := _PCA.fullmatch(name):
        return PCACodec(dim, int(match[2]), match[1], seed)
    raise InvalidArgument(
        f"unknown codec spec {spec!r}; known: {', '.join(available_specs())}, tq{{m}}+qjl, "
        "pq{M}x{nbits}, mib, mib{b}, mib-hamming, mib-asym, fp16, fp8, fp8-pca{r}, fp16-pca{r}"
    )


def codec_from_config(config: dict) -> Codec:
    """Rebuild a codec from its ``to_config()`` dict."""
    try:
        cls = _BY_CONFIG_NAME[config["codec"]]
    except (KeyError, TypeError) as exc:
        raise InvalidArgument(f"not a codec config: {config!r:.200}") from exc
    return cls.from_config(config)
