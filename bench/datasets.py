"""Benchmark data sets and their exact nearest neighbours.

A data set is a directory of numpy files:

- ``base.npy``: (n, d) float16 or float32, the database; loaded as float32.
- ``queries.npy``: (nq, d) float32.
- ``gt_ip.npy``, ``gt_l2.npy``, ``gt_cos.npy`` (each optional): integer (nq, >=100) ids of the
  exact nearest base rows, best first, by largest inner product, smallest Euclidean distance and
  largest cosine. A metric without a file is computed on first use and cached.

Known names: ``wordnet-minilm384`` (bundled under ``bench/data/``, the default),
``text-minilm384`` and ``glove50`` (in the shared data directory, see `shared_data_dir`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA_DIR = REPO_ROOT / "bench" / "data"
CACHE_DIR = REPO_ROOT / "bench" / ".cache"
SHARED_DATA_ENV = "VECSTORE_SHARED_DATA"

DEFAULT_DATASET = "wordnet-minilm384"
BUNDLED_SETS = {"wordnet-minilm384": "ip"}
SHARED_SETS = {"text-minilm384": "ip", "glove50": "l2"}

METRICS = ("ip", "l2", "cosine")
GT_FILE_STEMS = {"ip": "gt_ip", "l2": "gt_l2", "cosine": "gt_cos"}
GT_K = 100

_EXTRA_CANDIDATES = 32
_SCAN_BUDGET_BYTES = 256 * 2**20
_UNIT_NORM_TOLERANCE = 1e-2


def shared_data_dir() -> Path | None:
    """The shared data directory, or None when it does not exist.

    It is ``$VECSTORE_SHARED_DATA`` when that variable is set, else ``<repo root>/../shared/data``.
    """
    candidate = _shared_data_candidate()
    return candidate if candidate.is_dir() else None


def exact_ground_truth(
    base: np.ndarray, queries: np.ndarray, metric: str, k: int = GT_K
) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest base rows of every query.

    Scores are computed in float32 in bounded blocks to pick k + 32 candidates per query, which
    are then rescored in float64 and sorted, equal scores by the smaller id.

    Parameters
    ----------
    base : (n, d) float array, cast to float32; the result is exact for those float32 values.
    queries : (nq, d) float array, cast to float32.
    metric : "ip" (largest inner product first), "l2" (smallest squared Euclidean distance
        first) or "cosine" (largest cosine first). Cosine is the inner product of rows divided
        by their norms in float32, the vectors a cosine collection stores; a zero row has
        cosine 0 with everything.
    k : number of neighbours, 1 <= k <= n.

    Returns
    -------
    ids : (nq, k) int64 base row numbers, best first.
    scores : (nq, k) float32 inner products, squared distances or cosines, from float64.
    """
    metric = check_metric(metric)
    base32 = _finite_float32_matrix(base, "base")
    queries32 = _finite_float32_matrix(queries, "queries")
    if base32.shape[1] != queries32.shape[1]:
        raise ValueError(f"queries have dimension {queries32.shape[1]}, base has {base32.shape[1]}")
    n, dim = base32.shape
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the base size), got {k!r}")
    k = int(k)

    if metric == "cosine":
        base32, queries32, metric = _unit_rows(base32), _unit_rows(queries32), "ip"

    n_candidates = min(k + _EXTRA_CANDIDATES, n)
    base_norms = np.linalg.norm(base32, axis=1)
    # Bytes per query row when rescoring: a (candidates, d) float32 gather, its float64 copy
    # and a float64 difference.
    query_block = max(1, min(1024, _SCAN_BUDGET_BYTES // (20 * n_candidates * dim)))
    # Per score element: float32 score + int64 partition index + slack for the merge.
    base_block = max(1, _SCAN_BUDGET_BYTES // (16 * query_block))

    nq = queries32.shape[0]
    ids = np.empty((nq, k), dtype=np.int64)
    scores = np.empty((nq, k), dtype=np.float32)
    for start in range(0, nq, query_block):
        rows = slice(start, start + query_block)
        candidates = _float32_candidates(
            queries32[rows], base32, base_norms, metric, n_candidates, base_block
        )
        ids[rows], scores[rows] = _float64_ranking(queries32[rows], base32, candidates, metric, k)
    return ids, scores


@dataclass(eq=False)
class Dataset:
    """A base set, its queries and their exact nearest neighbours.

    Attributes
    ----------
    name : the set's name (the directory name for a set loaded by path).
    base : (n, d) float32.
    queries : (nq, d) float32.
    metric : the set's default metric, one of `METRICS`.
    path : the directory the files came from.
    cache_dir : where ground truth computed on first use is kept as ``.npy``.
    """

    name: str
    base: np.ndarray = field(repr=False)
    queries: np.ndarray = field(repr=False)
    metric: str
    path: Path
    cache_dir: Path
    _ground_truth: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        """Vector dimension d."""
        return int(self.base.shape[1])

    def ground_truth(self, metric: str | None = None) -> np.ndarray:
        """Exact neighbour ids, (nq, min(100, n)) int64, best first.

        ``metric`` defaults to the set's own. A metric without a ``gt_*.npy`` file is computed
        with `exact_ground_truth` and cached under ``cache_dir``.
        """
        metric = self.metric if metric is None else check_metric(metric)
        if metric not in self._ground_truth:
            self._ground_truth[metric] = self._cached_ground_truth(metric)
        return self._ground_truth[metric]

    def _cached_ground_truth(self, metric: str) -> np.ndarray:
        k = min(GT_K, self.base.shape[0])
        cache_file = self.cache_dir / f"{GT_FILE_STEMS[metric]}_k{k}_{self._fingerprint()}.npy"
        if cache_file.is_file():
            return _checked_ground_truth(
                np.load(cache_file), cache_file, self.queries.shape[0], self.base.shape[0]
            )
        ids, _ = exact_ground_truth(self.base, self.queries, metric, k)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.save(f, ids.astype(np.int32))
        os.replace(partial, cache_file)
        return ids

    def _fingerprint(self) -> str:
        digest = hashlib.blake2b(digest_size=8)
        for array in (self.base, self.queries):
            digest.update(repr(array.shape).encode())
            digest.update(np.ascontiguousarray(array, dtype=np.float32).data)
        return digest.hexdigest()


def load_dataset(
    name_or_path: str | os.PathLike = DEFAULT_DATASET,
    max_queries: int | None = None,
    *,
    metric: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load a data set by name or from a directory.

    Parameters
    ----------
    name_or_path : a known name (``wordnet-minilm384``, ``text-minilm384``, ``glove50``) or a
        directory holding ``base.npy``, ``queries.npy`` and optionally ``gt_*.npy``.
    max_queries : keep only the first this many queries (and their ground truth rows).
    metric : the default metric; for a known set its own, for a directory "ip" when every base
        vector has unit norm and "l2" otherwise.
    cache_dir : where to keep computed ground truth; default ``bench/.cache/<name>``.

    Raises
    ------
    FileNotFoundError : the set's directory or one of its required files is missing.
    ValueError : a file has the wrong shape or dtype, or an argument is invalid.
    """
    path, known_metric = _resolve(name_or_path)
    base = _load_matrix(path / "base.npy")
    queries = _load_matrix(path / "queries.npy")
    if base.shape[1] != queries.shape[1]:
        raise ValueError(
            f"{path}: queries.npy has dimension {queries.shape[1]}, base.npy has {base.shape[1]}"
        )
    ground_truth = {}
    for gt_metric, stem in GT_FILE_STEMS.items():
        gt_file = path / f"{stem}.npy"
        if gt_file.is_file():
            ground_truth[gt_metric] = _checked_ground_truth(
                np.load(gt_file), gt_file, queries.shape[0], base.shape[0]
            )
    if max_queries is not None:
        if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
            raise ValueError(f"max_queries must be a positive integer, got {max_queries!r}")
        queries = queries[:max_queries]
        ground_truth = {m: ids[:max_queries] for m, ids in ground_truth.items()}

    if metric is None:
        metric = known_metric or _default_metric(base)
    name = path.name
    return Dataset(
        name=name,
        base=base,
        queries=queries,
        metric=check_metric(metric),
        path=path,
        cache_dir=Path(cache_dir) if cache_dir is not None else CACHE_DIR / name,
        _ground_truth=ground_truth,
    )


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is one of `METRICS`, else raise ValueError."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric


def _shared_data_candidate() -> Path:
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def _resolve(name_or_path: str | os.PathLike) -> tuple[Path, str | None]:
    """The set's directory and, for a known name, its default metric."""
    name = os.fspath(name_or_path)
    if name in BUNDLED_SETS:
        path, known_metric = BUNDLED_DATA_DIR / name, BUNDLED_SETS[name]
    elif name in SHARED_SETS:
        shared = shared_data_dir()
        if shared is None:
            raise FileNotFoundError(
                f"data set {name!r} lives in the shared data directory "
                f"{_shared_data_candidate()}, which does not exist; set {SHARED_DATA_ENV} "
                f"to the directory holding {name}/"
            )
        path, known_metric = shared / name, SHARED_SETS[name]
    else:
        path, known_metric = Path(name), None
    if not path.is_dir():
        known = ", ".join([*BUNDLED_SETS, *SHARED_SETS])
        raise FileNotFoundError(
            f"{path} is not a directory; expected a data set name ({known}) "
            "or a directory holding base.npy and queries.npy"
        )
    for required in ("base.npy", "queries.npy"):
        if not (path / required).is_file():
            raise FileNotFoundError(
                f"{path / required} is missing; a data set directory needs base.npy (n, d) "
                "and queries.npy (nq, d)"
            )
    return path, known_metric


def _load_matrix(file: Path) -> np.ndarray:
    """A (rows, d) float file as C-contiguous float32."""
    array = np.load(file)
    if array.ndim != 2 or array.shape[0] == 0 or array.dtype.kind != "f":
        raise ValueError(
            f"{file} must hold a non-empty 2-D float array, got {array.dtype} {array.shape}"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _checked_ground_truth(ids: np.ndarray, file: Path, n_queries: int, n_base: int) -> np.ndarray:
    """Ground truth ids read from ``file`` as int64, after checking their shape and dtype."""
    k = min(GT_K, n_base)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[0] != n_queries:
        raise ValueError(
            f"{file} must hold integer ids of shape ({n_queries}, >={k}), "
            f"got {ids.dtype} {ids.shape}"
        )
    if ids.shape[1] < k:
        raise ValueError(f"{file} has {ids.shape[1]} neighbours per query, need {k}")
    return ids.astype(np.int64)


def _default_metric(base: np.ndarray) -> str:
    norms = np.linalg.norm(base, axis=1)
    return "ip" if np.all(np.abs(norms - 1.0) <= _UNIT_NORM_TOLERANCE) else "l2"


def _finite_float32_matrix(x: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim != 2 or array.shape[0] == 0 or array.dtype.kind not in "iuf":
        raise ValueError(
            f"{what} must be a non-empty 2-D real array, got {array.dtype} {array.shape}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or Inf")
    return array


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """(n, d) float32 rows divided by their float32 norms, as vecstore stores cosine vectors.

    Zero rows stay zero.
    """
    norms = np.linalg.norm(x, axis=1)
    return x / np.where(norms > 0, norms, 1.0)[:, None].astype(np.float32)


def _float32_candidates(
    queries: np.ndarray,
    base: np.ndarray,
    base_norms: np.ndarray,
    metric: str,
    n_candidates: int,
    base_block: int,
) -> np.ndarray:
    """(nq, n_candidates) int64 ids of the best float32 scores of each query, unordered."""
    nq = queries.shape[0]
    best_scores = np.empty((nq, 0), dtype=np.float32)
    best_ids = np.empty((nq, 0), dtype=np.int64)
    for start in range(0, base.shape[0], base_block):
        stop = min(start + base_block, base.shape[0])
        scores = _float32_scores(queries, base[start:stop], base_norms[start:stop], metric)
        block_ids = np.broadcast_to(np.arange(start, stop, dtype=np.int64), scores.shape)
        scores, block_ids = _top_columns(scores, block_ids, n_candidates)
        best_scores, best_ids = _top_columns(
            np.concatenate([best_scores, scores], axis=1),
            np.concatenate([best_ids, block_ids], axis=1),
            n_candidates,
        )
    return best_ids


def _float32_scores(
    queries: np.ndarray, base: np.ndarray, base_norms: np.ndarray, metric: str
) -> np.ndarray:
    """(nq, n) float32 scores, larger is better, ranking base rows as ``metric`` does."""
    scores = queries @ base.T
    if metric == "l2":
        # |q - x|^2 = |q|^2 - 2 <q, x> + |x|^2; |q|^2 does not change the ranking.
        scores *= 2.0
        scores -= base_norms**2
    return scores


def _top_columns(scores: np.ndarray, ids: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest scores of each row with their ids, unordered."""
    width = scores.shape[1]
    if width <= count:
        return scores, ids
    keep = np.argpartition(scores, width - count, axis=1)[:, width - count :]
    return np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)


def _float64_ranking(
    queries: np.ndarray,
    base: np.ndarray,
    candidates: np.ndarray,
    metric: str,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rescore candidates in float64; the best k per row as (ids int64, scores float32)."""
    vectors = base[candidates].astype(np.float64)
    queries64 = queries.astype(np.float64)
    if metric == "l2":
        diff = vectors - queries64[:, None, :]
        scores = np.einsum("qcd,qcd->qc", diff, diff)
        sort_key = scores
    else:
        scores = np.einsum("qcd,qd->qc", vectors, queries64)
        sort_key = -scores
    order = np.lexsort((candidates, sort_key), axis=1)[:, :k]
    ids = np.take_along_axis(candidates, order, axis=1)
    return ids, np.take_along_axis(scores, order, axis=1).astype(np.float32)
