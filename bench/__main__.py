"""Command line: ``python -m bench run [--dataset NAME|PATH] [--codecs a,b,c]``."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from bench.datasets import load_dataset
from bench.run import DEFAULT_CODECS, format_table, run_codec, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="index a data set with each codec; report recall, speed")
    run.add_argument("--dataset", default="wordnet-minilm384",
                     help="a bundled or shared set name, or a directory of .npy files")
    run.add_argument("--codecs", default=DEFAULT_CODECS, help="comma-separated codec specs")
    run.add_argument("--metric", default=None, help="ip, cosine or l2 (default: the set's own)")
    run.add_argument("--k", type=int, default=10)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--queries", type=int, default=None, help="use only the first N queries")
    run.add_argument("--single-queries", type=int, default=200,
                     help="queries timed one at a time for latency")
    args = parser.parse_args(argv)

    dataset = load_dataset(args.dataset, max_queries=args.queries)
    metric = args.metric or dataset.metric
    specs = [s.strip() for s in args.codecs.split(",") if s.strip()]
    print(f"{dataset.name}: {dataset.base.shape[0]} base x {dataset.dim} d, "
          f"{dataset.queries.shape[0]} queries, metric {metric}, k={args.k}", flush=True)
    rows = []
    for spec in tqdm(specs, desc="codecs", unit="codec", file=sys.stderr):
        rows.append(run_codec(dataset, spec, metric=metric, k=args.k, seed=args.seed,
                              single_queries=args.single_queries))
    print(format_table(rows))
    path = write_results(rows, dataset.name)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
