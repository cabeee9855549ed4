"""Benchmark data sets and their exact nearest neighbours.

A data set is one of:

- A directory of numpy files: ``base.npy`` ((n, d) float16 or float32, the database; loaded as
  float32), ``queries.npy`` ((nq, d) float32) and, each optional, ``gt_ip.npy``, ``gt_l2.npy``,
  ``gt_cos.npy``: integer (nq, >=100) ids of the exact nearest base rows, best first, by
  largest inner product, smallest Euclidean distance and largest cosine.
- TEXMEX files (SIFT, GIST): a directory holding ``<name>_base.fvecs`` (or ``.bvecs``),
  ``<name>_query.fvecs`` and optionally ``<name>_groundtruth.ivecs`` (Euclidean neighbours),
  or the path of the ``<name>_base`` file itself.
- An ann-benchmarks ``.hdf5`` file (``train``, ``test``, ``neighbors``, attribute
  ``distance``: angular -> cosine, euclidean -> l2, dot -> ip).

A metric without stored ground truth is computed on first use and cached.

Known names: ``wordnet-minilm384`` (bundled under ``bench/data/``, the default),
``text-minilm384`` and ``glove50`` (in the shared data directory, see `shared_data_dir`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.formats import read_ann_hdf5, read_vecs

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

HDF5_SUFFIXES = (".hdf5", ".h5")
VECS_BASE_SUFFIXES = {".fvecs": np.dtype("<f4"), ".bvecs": np.dtype("u1")}

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
    path : the directory the files came from (the file itself for an HDF5 set).
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
    max_base: int | None = None,
    query_file: str | os.PathLike | None = None,
    gt_file: str | os.PathLike | None = None,
) -> Dataset:
    """Load a data set by name, from a directory or from a file.

    Parameters
    ----------
    name_or_path : a known name (``wordnet-minilm384``, ``text-minilm384``, ``glove50``); a
        directory holding ``base.npy``, ``queries.npy`` and optionally ``gt_*.npy``; a
        directory holding ``<name>_base.fvecs`` (or ``.bvecs``), ``<name>_query.fvecs`` and
        optionally ``<name>_groundtruth.ivecs``; such a ``_base`` file; or an ann-benchmarks
        ``.hdf5`` file.
    max_queries : keep only the first this many queries (and their ground truth rows).
    metric : the default metric. Otherwise: a known set's own; "l2" for TEXMEX files with a
        ground truth file; the ``distance`` of an HDF5 file; else "ip" when every base vector
        has unit norm and "l2" otherwise.
    cache_dir : where to keep computed ground truth; default ``bench/.cache/<name>``.
    max_base : keep only the first this many base vectors. Stored ground truth refers to the
        whole base, so it is then ignored and computed for the slice.
    query_file, gt_file : for a ``_base.fvecs``/``.bvecs`` file, the queries (``.fvecs`` or
        ``.bvecs``) and Euclidean ground truth (``.ivecs``) when they are not its
        ``<name>_query`` and ``<name>_groundtruth`` siblings.

    Raises
    ------
    FileNotFoundError : the set's directory or one of its required files is missing.
    ImportError : an ``.hdf5`` file is given and h5py is not installed.
    ValueError : a file has the wrong shape or dtype, or an argument is invalid.
    """
    for what, count in (("max_queries", max_queries), ("max_base", max_base)):
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise ValueError(f"{what} must be a positive integer, got {count!r}")
    # One row more than asked shows whether the file had more rows than kept.
    source = _read_source(name_or_path, None if max_base is None else max_base + 1,
                          query_file, gt_file)
    base, queries = source.base, source.queries
    if base.shape[1] != queries.shape[1]:
        raise ValueError(
            f"{source.path}: queries have dimension {queries.shape[1]}, base has {base.shape[1]}"
        )
    sliced = max_base is not None and base.shape[0] > max_base
    if sliced:
        base = base[:max_base]
    ground_truth = {}
    if not sliced:
        for gt_metric, (ids, origin) in source.ground_truth.items():
            ground_truth[gt_metric] = _checked_ground_truth(
                ids, origin, queries.shape[0], base.shape[0]
            )
    if max_queries is not None:
        queries = queries[:max_queries]
        ground_truth = {m: ids[:max_queries] for m, ids in ground_truth.items()}

    if metric is None:
        metric = source.metric or _default_metric(base)
    return Dataset(
        name=source.name,
        base=base,
        queries=queries,
        metric=check_metric(metric),
        path=source.path,
        cache_dir=Path(cache_dir) if cache_dir is not None else CACHE_DIR / source.name,
        _ground_truth=ground_truth,
    )


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is one of `METRICS`, else raise ValueError."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric


@dataclass(eq=False)
class _Source:
    """Arrays as read from a set's files.

    ``ground_truth`` maps a metric to (ids, the file they came from); ``metric`` is the
    set's own default metric, None when the files do not say.
    """

    name: str
    path: Path
    base: np.ndarray
    queries: np.ndarray
    ground_truth: dict[str, tuple[np.ndarray, Path]]
    metric: str | None


def _shared_data_candidate() -> Path:
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def _read_source(
    name_or_path: str | os.PathLike,
    max_rows: int | None,
    query_file: str | os.PathLike | None,
    gt_file: str | os.PathLike | None,
) -> _Source:
    """Read a set in whichever format ``name_or_path`` names; at most ``max_rows`` base rows."""
    name = os.fspath(name_or_path)
    path = Path(name)
    vecs_base = None
    if path.is_file() and path.suffix in VECS_BASE_SUFFIXES:
        vecs_base = path
    elif path.is_dir() and not (path / "base.npy").is_file():
        vecs_base = _find_vecs_base(path)
    if vecs_base is not None:
        return _read_vecs_set(vecs_base, max_rows, query_file, gt_file)
    if query_file is not None or gt_file is not None:
        raise ValueError("query_file and gt_file apply only to a _base.fvecs or .bvecs set")
    if path.is_file() and path.suffix in HDF5_SUFFIXES:
        base, queries, neighbors, metric = read_ann_hdf5(path, max_rows)
        ground_truth = {} if neighbors is None else {metric: (neighbors, path)}
        return _Source(path.stem, path, base, queries, ground_truth, metric)
    path, known_metric = _resolve(name_or_path)
    ground_truth = {}
    for gt_metric, stem in GT_FILE_STEMS.items():
        gt_path = path / f"{stem}.npy"
        if gt_path.is_file():
            ground_truth[gt_metric] = (np.load(gt_path), gt_path)
    return _Source(
        path.name,
        path,
        _load_matrix(path / "base.npy", max_rows),
        _load_matrix(path / "queries.npy"),
        ground_truth,
        known_metric,
    )


def _find_vecs_base(directory: Path) -> Path | None:
    """The one ``*_base.fvecs`` or ``*_base.bvecs`` file in ``directory``, None if none."""
    found = sorted(f for suffix in VECS_BASE_SUFFIXES for f in directory.glob(f"*_base{suffix}"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ValueError(f"{directory} holds several base files ({names}); pass one of them")
    return found[0] if found else None


def _read_vecs_set(
    base_file: Path,
    max_rows: int | None,
    query_file: str | os.PathLike | None,
    gt_file: str | os.PathLike | None,
) -> _Source:
    """A TEXMEX set from its base file, finding the query and ground truth siblings."""
    stem = base_file.stem
    prefix = stem[: -len("_base")] if stem.endswith("_base") else stem
    if query_file is None:
        candidates = [base_file.with_name(f"{prefix}_query{s}") for s in VECS_BASE_SUFFIXES]
        query_file = next((f for f in candidates if f.is_file()), None)
        if query_file is None:
            raise FileNotFoundError(
                f"{base_file} has no queries beside it: expected {candidates[0].name} or "
                f"{candidates[1].name}, or name the file with query_file"
            )
    query_file = Path(query_file)
    if query_file.suffix not in VECS_BASE_SUFFIXES:
        raise ValueError(f"{query_file}: queries must be an .fvecs or .bvecs file")
    if gt_file is None:
        sibling = base_file.with_name(f"{prefix}_groundtruth.ivecs")
        gt_file = sibling if sibling.is_file() else None
    ground_truth = {}
    if gt_file is not None:
        gt_file = Path(gt_file)
        ground_truth["l2"] = (read_vecs(gt_file, np.dtype("<i4")), gt_file)
    return _Source(
        prefix,
        base_file.parent,
        _read_float_vecs(base_file, max_rows),
        _read_float_vecs(query_file),
        ground_truth,
        "l2" if ground_truth else None,
    )


def _read_float_vecs(file: Path, max_rows: int | None = None) -> np.ndarray:
    """An ``.fvecs`` or ``.bvecs`` file as (n, d) float32."""
    return read_vecs(file, VECS_BASE_SUFFIXES[file.suffix], max_rows).astype(np.float32)


def _resolve(name_or_path: str | os.PathLike) -> tuple[Path, str | None]:
    """The directory of a numpy set and, for a known name, its default metric."""
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
            f"{path} is not a data set: expected a name ({known}), a directory holding "
            "base.npy and queries.npy (or <name>_base.fvecs and <name>_query.fvecs), "
            "a <name>_base.fvecs or .bvecs file, or an ann-benchmarks .hdf5 file"
        )
    for required in ("base.npy", "queries.npy"):
        if not (path / required).is_file():
            raise FileNotFoundError(
                f"{path / required} is missing; a data set directory needs base.npy (n, d) "
                "and queries.npy (nq, d)"
            )
    return path, known_metric


def _load_matrix(file: Path, max_rows: int | None = None) -> np.ndarray:
    """A (rows, d) float file as C-contiguous float32; its first ``max_rows`` rows if given."""
    array = np.load(file, mmap_mode="r")
    if array.ndim != 2 or array.shape[0] == 0 or array.dtype.kind != "f":
        raise ValueError(
            f"{file} must hold a non-empty 2-D float array, got {array.dtype} {array.shape}"
        )
    return np.ascontiguousarray(array[:max_rows], dtype=np.float32)


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
