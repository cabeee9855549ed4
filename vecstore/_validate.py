"""Coercion and checking of user input. Every failure raises InvalidArgument."""

from __future__ import annotations

import numpy as np

from vecstore.errors import InvalidArgument


def as_matrix(x, dim: int, what: str = "vectors", *, check_finite: bool = True) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 array of shape (n, dim), n >= 1.

    A 1-D input of length ``dim`` is one row. Rejects non-numeric and complex dtypes,
    booleans, wrong shapes, empty batches and (with ``check_finite``) NaN or Inf values.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must be a numeric array: {exc}") from exc
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise InvalidArgument(
            f"{what} must have a real numeric dtype (float or integer), got {arr.dtype}"
        )
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidArgument(f"{what} must be 1-D or 2-D, got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise InvalidArgument(
            f"{what} have dimension {arr.shape[1]}, the collection expects {dim}"
        )
    if arr.shape[0] == 0:
        raise InvalidArgument(f"{what} is an empty batch")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if check_finite:
        finite = np.isfinite(out)
        if not finite.all():
            raise_not_finite(what, int(np.nonzero(~finite.all(axis=1))[0][0]))
    return out


def raise_not_finite(what: str, row: int):
    """InvalidArgument: ``what`` holds NaN or Inf, first at ``row``."""
    raise InvalidArgument(f"{what} contain NaN or Inf (first at row {row})")


# The largest Euclidean norm of a stored vector or a query: inner products and squared
# distances of such vectors stay finite in float32 (1e18 * 1e18 = 1e36 < 3.4e38).
MAX_NORM = 1e18


def row_norms(x: np.ndarray, what: str = "vectors", *, precise: bool = True) -> np.ndarray:
    """Euclidean norms (n,) float32 of the rows of ``x`` (n, d) float32; InvalidArgument
    naming the first row whose norm passes MAX_NORM.

    ``precise`` sums in float64, for stored vectors. Otherwise (queries) the sum is in
    float32, several times faster, and also stands for ``as_matrix``'s finite check: a
    row holding NaN or Inf has a norm that is not finite, and so does a row whose sum
    overflows, which is past MAX_NORM anyway. InvalidArgument names such a row.
    """
    if precise:
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    large = np.nonzero(~(norms <= MAX_NORM))[0]
    if large.size:
        if not precise and not np.isfinite(x[large[0]]).all():
            raise_not_finite(what, int(large[0]))
        raise InvalidArgument(
            f"{what} at row {int(large[0])} has norm {norms[large[0]]:.3g}; norms above "
            f"{MAX_NORM:.0e} are refused, so that scores stay finite in float32")
    return norms.astype(np.float32)


def fits_float16(x: np.ndarray, what: str = "vectors") -> None:
    """InvalidArgument unless every value of ``x`` (n, d) float32 is finite in float16."""
    limit = float(np.finfo(np.float16).max)
    large = np.nonzero(np.abs(x).max(axis=1) > limit)[0]
    if large.size:
        raise InvalidArgument(
            f"{what} at row {int(large[0])} holds a value beyond float16's range (+-{limit:g}); "
            "the collection stores vectors as float16")


def as_ids(ids, n: int | None = None, what: str = "ids") -> np.ndarray:
    """Return ``ids`` as a 1-D int64 array of non-negative values.

    ``n``, when given, is the required length. Rejects non-integer dtypes and negative
    ids (-1 marks a missing result).
    """
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise InvalidArgument(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or arr.dtype.kind not in "iu"):
        raise InvalidArgument(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise InvalidArgument(f"{what} must fit in int64")
    out = arr.astype(np.int64, copy=False)
    if n is not None and out.shape[0] != n:
        raise InvalidArgument(f"got {out.shape[0]} {what} for {n} vectors")
    if out.size and out.min() < 0:
        raise InvalidArgument(f"{what} must be non-negative, got {int(out.min())}")
    return out


def unique_ids(ids: np.ndarray, what: str = "ids") -> None:
    """Raise InvalidArgument naming the first id that appears twice in ``ids``."""
    if ids.size < 2:
        return
    s = np.sort(ids)
    dup = s[1:] == s[:-1]
    if dup.any():
        raise InvalidArgument(f"duplicate {what} in one batch: {int(s[1:][dup][0])}")


# The largest k a search accepts, as in Milvus: results are (nq, k) arrays held in memory.
MAX_K = 16384


def as_k(k) -> int:
    """Return ``k`` as an int in 1..MAX_K."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidArgument(f"k must be an integer, got {type(k).__name__}")
    if not 0 < k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
    return int(k)


# The largest rescore factor: a search fetches k * rescore candidates to rerank.
MAX_RESCORE = 64
# The most candidates (k * rescore) one query keeps during a scan.
MAX_CANDIDATES = 1 << 16
# The most result slots (queries * k) one search returns.
MAX_RESULTS = 1 << 22


def as_rescore(rescore) -> int | None:
    """Return ``rescore`` as an int in 1..MAX_RESCORE, or None when not rescoring."""
    if rescore is None:
        return None
    if isinstance(rescore, bool) or not isinstance(rescore, int | np.integer):
        raise InvalidArgument(f"rescore must be an integer, got {type(rescore).__name__}")
    if not 1 <= rescore <= MAX_RESCORE:
        raise InvalidArgument(f"rescore must be between 1 and {MAX_RESCORE}, got {rescore}")
    return int(rescore)


def check_search_size(nq: int, k: int, rescore: int | None) -> None:
    """InvalidArgument when a search of ``nq`` queries would return more than MAX_RESULTS
    slots (nq * k) or keep more than MAX_CANDIDATES candidates a query (k * rescore)."""
    if k * (rescore or 1) > MAX_CANDIDATES:
        raise InvalidArgument(
            f"k * rescore is {k} * {rescore} = {k * rescore}; a query keeps at most "
            f"{MAX_CANDIDATES} candidates")
    if nq * k > MAX_RESULTS:
        raise InvalidArgument(
            f"{nq} queries * k = {k} is {nq * k} results; one search returns at most "
            f"{MAX_RESULTS} (send fewer queries per call)")
