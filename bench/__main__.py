"""Benchmarks: ``python -m bench run`` (recall and speed per codec) and
``python -m bench encode`` (encoding throughput)."""

from __future__ import annotations

import argparse
import sys

from threadpoolctl import threadpool_limits
from tqdm import tqdm

from bench.datasets import load_dataset
from bench.run import DEFAULT_CODECS, format_table, measure_encode, run_codec, write_results


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
    encode = commands.add_parser("encode", help="time encoding of the base set per codec")
    encode.add_argument("--dataset", default="wordnet-minilm384")
    encode.add_argument("--codecs", default="tq4")
    encode.add_argument("--seed", type=int, default=0)
    encode.add_argument("--repeat", type=int, default=3)
    encode.add_argument("--threads", type=int, default=None,
                        help="cap BLAS and OpenMP threads (1 measures one core)")
    args = parser.parse_args(argv)
    if args.command == "encode":
        return encode_command(args)
    return run_command(args)


def encode_command(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset)
    specs = [s.strip() for s in args.codecs.split(",") if s.strip()]
    with threadpool_limits(limits=args.threads):
        rows = [measure_encode(dataset, spec, seed=args.seed, repeat=args.repeat)
                for spec in specs]
    for row in rows:
        row["threads"] = args.threads
        print(f"{row['codec']:<10} {row['n_base']} x {row['dim']}: {row['encode_s']:.3f} s, "
              f"{row['encode_vectors_per_s']:,.0f} vectors/s (threads: {args.threads or 'all'})")
    print(f"results: {write_results(rows, f'encode-{dataset.name}')}")
    return 0


def run_command(args: argparse.Namespace) -> int:
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
