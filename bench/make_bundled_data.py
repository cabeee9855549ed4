"""Build the bundled data set ``bench/data/wordnet-minilm384`` from the shared text-minilm384 set.

Usage: ``python bench/make_bundled_data.py [--shared PATH] [--out DIR]``

The set holds the first 25,000 base rows and the first 500 query rows whose source is WordNet,
in row order and with their stored values, plus exact top-100 ground truth, texts, a licence
notice and a README. The output is byte-for-byte the same on every run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datasets import (  # noqa: E402
    BUNDLED_DATA_DIR,
    GT_K,
    exact_ground_truth,
    shared_data_dir,
)

SOURCE_SET = "text-minilm384"
SET_NAME = "wordnet-minilm384"
SOURCE = "wordnet"
N_BASE = 25_000
N_QUERIES = 500

WORDNET_LICENSE = """\
This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same.
"""

LICENSE_TEXT = f"""\
wordnet-minilm384: licence notices

Texts
  base_texts.jsonl.gz and query_texts.jsonl.gz hold synset glosses of WordNet 3.0, written as
  "lemma, lemma: gloss". The vectors in base.npy and queries.npy are embeddings of those texts.
  WordNet 3.0 is distributed under the following licence (the WordNet3.0 licence text of the
  Debian package wordnet-base 1:3.0-37, as in the header of the WordNet database files):

{WORDNET_LICENSE}
Vectors
  The vectors were produced by the sentence-transformers model all-MiniLM-L6-v2
  (https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), licensed under the
  Apache License 2.0.
"""

README_TEMPLATE = """\
wordnet-minilm384 -- real sentence embeddings of WordNet 3.0 glosses (all-MiniLM-L6-v2, 384-d)

What     {n_base:,} base vectors and {n_queries:,} query vectors (disjoint texts), unit norm, with
         exact top-{k} neighbours. The default data set of vecstore's benchmarks and tests.
Metric   inner product (= cosine, the vectors have unit norm). gt_l2 is also given. Rounding to
         float16 leaves base norms in [{norm_min:.5f}, {norm_max:.5f}], so L2 and inner product
         order close neighbours differently at times: gt_l2 equals gt_ip at {l2_agreement:.1%}
         of positions.
         Query difficulty: top-1 inner product median {top1_median:.2f}
         (1%..99%: {top1_p1:.2f}..{top1_p99:.2f}); 100th neighbour median {top100_median:.2f}.
Files    base.npy             float16 ({n_base}, 384)  cast to float32 before use
         queries.npy          float32 ({n_queries}, 384)
         gt_ip.npy            int32   ({n_queries}, {k})  base rows, largest inner product first
         gt_ip_score.npy      float32 ({n_queries}, {k})  those inner products
         gt_l2.npy            int32   ({n_queries}, {k})  base rows, smallest distance first
         gt_l2_dist2.npy      float32 ({n_queries}, {k})  those squared distances
         base_texts.jsonl.gz  one {{"id", "source_id", "key", "text"}} per base row
         query_texts.jsonl.gz the same per query row
         ("id" is the row here, "source_id" the row in text-minilm384, "key" the WordNet synset)
         Ground truth is exact for the float16 base values cast to float32: scanned in float32,
         rescored in float64, equal scores ordered by the smaller id.
Source   The shared text-minilm384 set (all-MiniLM-L6-v2 embeddings of English dictionary
         texts, 384-d, unit norm, base stored as float16): the first {n_base:,} base rows and
         the first {n_queries:,} query rows whose source is "wordnet", in row order, values
         unchanged.
Licence  WordNet 3.0 licence (texts) and Apache-2.0 (the all-MiniLM-L6-v2 model); see LICENSE.txt.
Remake   python bench/make_bundled_data.py [--shared DIR]   (DIR holds text-minilm384/; default
         $VECSTORE_SHARED_DATA, else ../shared/data beside the repository). Deterministic.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=None,
        help="shared data directory holding text-minilm384/ (default: $VECSTORE_SHARED_DATA, "
        "else ../shared/data beside the repository)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BUNDLED_DATA_DIR / SET_NAME,
        help="output directory (default: bench/data/wordnet-minilm384)",
    )
    args = parser.parse_args(argv)
    shared = args.shared if args.shared is not None else shared_data_dir()
    if shared is None:
        parser.error(
            "no shared data directory ($VECSTORE_SHARED_DATA or ../shared/data beside the "
            "repository); pass --shared"
        )
    if not (shared / SOURCE_SET).is_dir():
        parser.error(f"{shared / SOURCE_SET} is not a directory; pass --shared")
    build(shared / SOURCE_SET, args.out)


def build(source_dir: Path, out_dir: Path) -> None:
    """Write the bundled set built from ``source_dir`` (text-minilm384) into ``out_dir``."""
    base_texts = _read_texts(source_dir / "base_texts.jsonl.gz")
    query_texts = _read_texts(source_dir / "query_texts.jsonl.gz")
    base_rows = _first_rows_of_source(base_texts, N_BASE)
    query_rows = _first_rows_of_source(query_texts, N_QUERIES)

    base = np.load(source_dir / "base.npy", mmap_mode="r")[base_rows]
    queries = np.load(source_dir / "queries.npy", mmap_mode="r")[query_rows]
    if base.dtype != np.float16 or queries.dtype != np.float32:
        raise ValueError(
            f"{source_dir}: expected a float16 base and float32 queries, "
            f"got {base.dtype} and {queries.dtype}"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "base.npy", np.ascontiguousarray(base))
    np.save(out_dir / "queries.npy", np.ascontiguousarray(queries))
    base32 = base.astype(np.float32)
    ip_ids, ip_scores = exact_ground_truth(base32, queries, "ip", GT_K)
    l2_ids, l2_dist2 = exact_ground_truth(base32, queries, "l2", GT_K)
    np.save(out_dir / "gt_ip.npy", ip_ids.astype(np.int32))
    np.save(out_dir / "gt_ip_score.npy", ip_scores)
    np.save(out_dir / "gt_l2.npy", l2_ids.astype(np.int32))
    np.save(out_dir / "gt_l2_dist2.npy", l2_dist2)

    _write_texts(out_dir / "base_texts.jsonl.gz", base_texts, base_rows)
    _write_texts(out_dir / "query_texts.jsonl.gz", query_texts, query_rows)
    (out_dir / "LICENSE.txt").write_text(LICENSE_TEXT, encoding="utf-8")
    readme = _readme(base32, ip_ids, ip_scores, l2_ids)
    (out_dir / "README.txt").write_text(readme, encoding="utf-8")


def _read_texts(file: Path) -> list[dict]:
    """The rows of a ``{"id", "source", "key", "text"}`` JSON-lines file, checked to be in order."""
    with gzip.open(file, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    for row_number, row in enumerate(rows):
        if row["id"] != row_number:
            raise ValueError(f"{file}: line {row_number + 1} has id {row['id']}, not {row_number}")
    return rows


def _first_rows_of_source(texts: list[dict], count: int) -> np.ndarray:
    """(count,) int64 numbers of the first ``count`` rows whose source is WordNet."""
    rows = np.array([row["id"] for row in texts if row["source"] == SOURCE], dtype=np.int64)
    if rows.shape[0] < count:
        raise ValueError(f"only {rows.shape[0]} rows have source {SOURCE!r}, need {count}")
    return rows[:count]


def _write_texts(file: Path, texts: list[dict], rows: np.ndarray) -> None:
    """Write the texts of ``rows`` renumbered from 0, as gzip with no timestamp or file name."""
    lines = [
        json.dumps(
            {
                "id": new_row,
                "source_id": int(source_row),
                "key": texts[source_row]["key"],
                "text": texts[source_row]["text"],
            },
            ensure_ascii=False,
        )
        + "\n"
        for new_row, source_row in enumerate(rows)
    ]
    with (
        open(file, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f,
    ):
        f.write("".join(lines).encode("utf-8"))


def _readme(base: np.ndarray, ip_ids: np.ndarray, ip_scores: np.ndarray, l2_ids: np.ndarray) -> str:
    """README text with statistics of the set.

    Parameters
    ----------
    base : (n, d) float32.
    ip_ids, ip_scores : (nq, k) int64 and float32, ground truth by inner product.
    l2_ids : (nq, k) int64, ground truth by Euclidean distance.
    """
    norms = np.linalg.norm(base, axis=1)
    top1 = ip_scores[:, 0]
    return README_TEMPLATE.format(
        n_base=N_BASE,
        n_queries=N_QUERIES,
        k=GT_K,
        norm_min=float(norms.min()),
        norm_max=float(norms.max()),
        l2_agreement=float(np.mean(ip_ids == l2_ids)),
        top1_median=float(np.median(top1)),
        top1_p1=float(np.percentile(top1, 1)),
        top1_p99=float(np.percentile(top1, 99)),
        top100_median=float(np.median(ip_scores[:, -1])),
    )


if __name__ == "__main__":
    main()
