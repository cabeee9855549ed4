"""The result row: one JSON line per method (a vecstore codec or a peer index) and data set.

Every row holds the keys of `REQUIRED` with values of the listed types; `OPTIONAL` keys may
be present.

- ``method`` is a codec spec (``kind`` "vecstore") or a peer name (``kind`` "peer");
  ``family`` groups methods into one line of a plot.
- ``bytes_per_vector`` counts what a scan reads per vector: codes plus per-vector factors
  (norms, scales), ids excluded; ``bits_per_dim`` is the same in bits per dimension.
  ``stored_vector_bytes`` counts vectors kept only for rescoring.
- ``build_s`` is training plus adding the base; ``encode_vectors_per_s`` = n_base / build_s.
  ``qps_batch`` searches all queries in one call; ``qps_single`` and the latency percentiles
  search one query per call.
- Recall metrics are means over the seeds a method ran with (``seeds``; one seed for a
  deterministic method); ``<metric>_mean`` repeats the mean, ``<metric>_std`` is the
  population standard deviation over seeds and ``<metric>_seeds`` lists one value per seed.
  Timings come from the first seed.
- ``rescore`` is R when k * R candidates were reranked, else null; versions of peer
  libraries are null when they are not installed.
"""

from __future__ import annotations

import math

NUMBER = (int, float)
NULLABLE_STR = (str, type(None))

KINDS = ("vecstore", "peer")
RECALL_METRICS = ("recall_at_1", "recall_at_10", "recall_1_at_10")

REQUIRED: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "metric": (str,),
    "method": (str,),
    "family": (str,),
    "kind": (str,),
    "bits_per_dim": NUMBER,
    "bytes_per_vector": NUMBER,
    "build_s": NUMBER,
    "encode_vectors_per_s": NUMBER,
    "qps_batch": NUMBER,
    "qps_single": NUMBER,
    "latency_p50_ms": NUMBER,
    "latency_p99_ms": NUMBER,
    **{name: NUMBER for name in RECALL_METRICS},
    **{f"{name}_mean": NUMBER for name in RECALL_METRICS},
    **{f"{name}_std": NUMBER for name in RECALL_METRICS},
    **{f"{name}_seeds": (list,) for name in RECALL_METRICS},
    "seeds": (list,),
    "rescore": (int, type(None)),
    "k": (int,),
    "n_base": (int,),
    "n_queries": (int,),
    "dim": (int,),
    "date": (str,),
    "machine": (str,),
    "processor": (str,),
    "cpus": (int, type(None)),
    "python": (str,),
    "numpy": (str,),
    "vecstore": (str,),
    "faiss": NULLABLE_STR,
    "turbovec": NULLABLE_STR,
    "rabitqlib": NULLABLE_STR,
}

OPTIONAL: dict[str, tuple[type, ...]] = {
    "params": (dict,),
    "threads": (int, type(None)),
    "stored_vector_bytes": NUMBER,
}


def validate_row(row: dict) -> dict:
    """Return ``row`` unchanged if it is a valid result row.

    Raises
    ------
    ValueError : naming the first key that is missing, has the wrong type, or holds a value
        out of range (a kind other than `KINDS`, a recall outside [0, 1], a negative or
        non-finite number, per-seed lists whose length differs from ``seeds``).
    """
    if not isinstance(row, dict):
        raise ValueError(f"a result row must be a dict, got {type(row).__name__}")
    for key, types in REQUIRED.items():
        if key not in row:
            raise ValueError(f"result row is missing key {key!r}")
        _check_type(row, key, types)
    for key, types in OPTIONAL.items():
        if key in row:
            _check_type(row, key, types)
    if row["kind"] not in KINDS:
        raise ValueError(f"key 'kind' must be one of {KINDS}, got {row['kind']!r}")
    for key, types in REQUIRED.items():
        if types is NUMBER and not (math.isfinite(row[key]) and row[key] >= 0):
            raise ValueError(f"key {key!r} must be a finite number >= 0, got {row[key]!r}")
    n_seeds = len(row["seeds"])
    if n_seeds == 0 or not all(_is_int(seed) for seed in row["seeds"]):
        raise ValueError(f"key 'seeds' must be a non-empty list of integers, got {row['seeds']!r}")
    for name in RECALL_METRICS:
        for key in (name, f"{name}_mean"):
            if row[key] > 1:
                raise ValueError(f"key {key!r} is a recall and must lie in [0, 1], got {row[key]}")
        per_seed = row[f"{name}_seeds"]
        if len(per_seed) != n_seeds or not all(
            isinstance(v, NUMBER) and not isinstance(v, bool) and 0 <= v <= 1 for v in per_seed
        ):
            raise ValueError(
                f"key '{name}_seeds' must hold {n_seeds} recalls in [0, 1], got {per_seed!r}"
            )
    return row


def _check_type(row: dict, key: str, types: tuple[type, ...]) -> None:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, types):
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ValueError(f"key {key!r} must be {expected}, got {type(value).__name__} {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
