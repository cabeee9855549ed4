"""Benchmarks: ``python -m bench run`` (recall and speed of codecs and peer libraries),
``python -m bench encode`` (encoding throughput), ``python -m bench storage`` (insert
throughput and reopen time on disk), ``python -m bench merge`` (background merges under
many small flushes), ``python -m bench load`` (a gRPC server under
concurrent clients) and ``python -m bench plot`` (PNG plots of result files)."""

from __future__ import annotations

import argparse
import sys
from functools import partial

from threadpoolctl import threadpool_limits
from tqdm import tqdm

import vecstore
from bench.datasets import load_dataset
from bench.peers import peer_specs
from bench.plot import PLOT_DIR, load_rows, plot_results
from bench.run import (
    RESULTS_DIR,
    VecstoreMethod,
    check_rescore_support,
    default_codecs,
    format_table,
    machine_info,
    measure_encode,
    run_method,
    write_results,
)
from bench.schema import validate_row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu"]:
        from bench import gpu

        return gpu.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="index a data set with codecs and peers; report "
                                          "recall and speed")
    run.add_argument("--dataset", default="wordnet-minilm384",
                     help="a bundled or shared set name, a directory (.npy files, or "
                          "<name>_base.fvecs and <name>_query.fvecs), a <name>_base.fvecs or "
                          ".bvecs file, or an ann-benchmarks .hdf5 file")
    run.add_argument("--query-file", default=None, help="queries of a .fvecs/.bvecs base file")
    run.add_argument("--gt-file", default=None, help="Euclidean ground truth (.ivecs) of a "
                                                     ".fvecs/.bvecs base file")
    run.add_argument("--codecs", default=None,
                     help="comma-separated codec specs, or 'none' (default: flat, tq1-tq4, "
                          "tq2-prod-tq4-prod and the quick baselines vecstore has)")
    run.add_argument("--peers", default="",
                     help="comma-separated peer libraries (faiss, turbovec, rabitqlib) or peer "
                          "names (faiss-rabitq4, turbovec2, ...); default none")
    run.add_argument("--metric", default=None, choices=["ip", "cosine", "l2"],
                     help="default: the set's own")
    run.add_argument("--k", type=int, default=10)
    run.add_argument("--seed", type=int, default=0, help="the first seed")
    run.add_argument("--seeds", type=int, default=5,
                     help="run seeded methods with this many seeds (seed, seed+1, ...)")
    run.add_argument("--peer-seeds", type=int, default=None,
                     help="seeds for seeded peers (default: --seeds); faiss PQ training is slow")
    run.add_argument("--rescore", type=int, default=None,
                     help="rerank k*R candidates with float16 originals (vecstore codecs)")
    run.add_argument("--queries", type=int, default=None, help="use only the first N queries")
    run.add_argument("--base", type=int, default=None,
                     help="use only the first N base vectors (ground truth is recomputed)")
    run.add_argument("--single-queries", type=int, default=100,
                     help="queries timed one at a time for latency")
    run.add_argument("--threads", type=int, default=None,
                     help="cap BLAS and OpenMP threads, and rabitqlib's (default: all cores)")
    run.add_argument("--out", default=str(RESULTS_DIR), help="directory for the results file")

    encode = commands.add_parser("encode", help="time encoding of the base set per codec")
    encode.add_argument("--dataset", default="wordnet-minilm384")
    encode.add_argument("--codecs", default="tq4")
    encode.add_argument("--seed", type=int, default=0)
    encode.add_argument("--repeat", type=int, default=3)
    encode.add_argument("--threads", type=int, default=None,
                        help="cap vecstore's, BLAS and OpenMP threads (1 measures one core)")

    storage = commands.add_parser("storage", help="time inserts (sync and batch durability) "
                                                  "and reopening an on-disk database")
    storage.add_argument("--dataset", default="wordnet-minilm384",
                         help="base set, tiled with noise up to --n rows")
    storage.add_argument("--n", type=int, default=100_000)
    storage.add_argument("--batch", type=int, default=10_000, help="rows per add call")
    storage.add_argument("--codec", default="tq4")
    storage.add_argument("--durability", default="sync,batch")
    storage.add_argument("--log-rows", type=int, default=None,
                         help="rows left in the log (unflushed) for the second reopen "
                              "(default: n / 10)")
    storage.add_argument("--dir", default="bench/.cache/storage",
                         help="scratch directory for the databases (deleted first)")
    storage.add_argument("--repeat", type=int, default=3)

    cpu = commands.add_parser("cpu", help="CPU search through Collection.search beside "
                                          "faiss, turbovec and rabitqlib: QPS, recall, GB/s")
    cpu.add_argument("--dataset", default="wordnet-minilm384")
    cpu.add_argument("--codecs", default="tq4,tq2,tq1,tq8,tq3,flat")
    cpu.add_argument("--k", type=int, default=10)
    cpu.add_argument("--single", type=int, default=200, help="queries timed one per call")
    cpu.add_argument("--batch", type=int, default=1000, help="queries timed in one call")
    cpu.add_argument("--no-peers", action="store_true", help="vecstore only")
    cpu.add_argument("--threads", type=int, default=1, help="threads every method uses")
    cpu.add_argument("--rounds", type=int, default=5,
                     help="interleaved rounds of single queries (half as many of batches)")
    cpu.add_argument("--tile", type=int, default=None,
                     help="repeat the base set to this many rows (speed only, no recall)")
    cpu.add_argument("--no-paths", action="store_true",
                     help="skip timing the first codec on every scan path")
    cpu.add_argument("--dir", default="bench/.cache/cpu",
                     help="scratch directory for the collections (deleted first)")

    merge = commands.add_parser("merge", help="many small flushes with background merges: "
                                              "segments, search latency, write amplification")
    merge.add_argument("--flushes", type=int, default=1000)
    merge.add_argument("--rows", type=int, default=100, help="rows per flush")
    merge.add_argument("--dim", type=int, default=64)
    merge.add_argument("--codec", default="tq4")
    merge.add_argument("--k", type=int, default=10)
    merge.add_argument("--fanouts", default="2,3,4,off",
                       help="comma-separated merge fanouts; 'off' turns merges off")
    merge.add_argument("--rounds", type=int, default=5,
                       help="alternating timing rounds of merged and compacted searches")
    merge.add_argument("--seed", type=int, default=0)
    merge.add_argument("--dir", default="bench/.cache/merge",
                       help="scratch directory for the databases (deleted first)")

    load = commands.add_parser("load", help="load-test a gRPC server: insert throughput, "
                                            "QPS and latency percentiles per concurrency")
    where = load.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, host:port")
    where.add_argument("--serve", help="start `vecstore serve` over this directory instead")
    load.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                      help="the started server's device (with --serve)")
    load.add_argument("--api-key", default=None, help="API key (default: $VECSTORE_API_KEY)")
    load.add_argument("--dataset", default="wordnet-minilm384",
                      help="base set, tiled with noise up to --n rows")
    load.add_argument("--n", type=int, default=100_000)
    load.add_argument("--codec", default="tq4")
    load.add_argument("--batch", type=int, default=10_000, help="rows per insert call")
    load.add_argument("--concurrency", default="1,8,32",
                      help="client processes at each level, comma-separated")
    load.add_argument("--duration", type=float, default=30, help="seconds per level")
    load.add_argument("--recall-queries", type=int, default=200,
                      help="queries cycled through (exact neighbours computed for recall)")

    plot = commands.add_parser("plot", help="draw recall vs bytes and recall vs QPS as PNGs")
    plot.add_argument("results", nargs="+", help="JSON-lines files written by 'run'")
    plot.add_argument("--out", default=str(PLOT_DIR), help="directory for the PNG files")

    args = parser.parse_args(argv)
    if args.command == "encode":
        return encode_command(args)
    if args.command == "plot":
        return plot_command(args)
    if args.command == "storage":
        return storage_command(args)
    if args.command == "load":
        return load_command(args)
    if args.command == "merge":
        return merge_command(args)
    if args.command == "cpu":
        return cpu_command(args)
    return run_command(args)


def encode_command(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset)
    specs = [s.strip() for s in args.codecs.split(",") if s.strip()]
    previous = vecstore.get_num_threads()
    if args.threads:
        vecstore.set_num_threads(args.threads)
    try:
        with threadpool_limits(limits=args.threads):
            rows = [measure_encode(dataset, spec, seed=args.seed, repeat=args.repeat)
                    for spec in specs]
    finally:
        vecstore.set_num_threads(previous)
    for row in rows:
        row["threads"] = args.threads
        print(f"{row['codec']:<10} {row['n_base']} x {row['dim']}: {row['encode_s']:.3f} s, "
              f"{row['encode_vectors_per_s']:,.0f} vectors/s (threads: {args.threads or 'all'})")
    print(f"results: {write_results(rows, f'encode-{dataset.name}')}")
    return 0


def storage_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench import storage

    dataset = load_dataset(args.dataset)
    root = Path(args.dir)
    rows = []
    for durability in [d.strip() for d in args.durability.split(",") if d.strip()]:
        row = storage.measure_inserts(dataset, root / durability, n=args.n, batch=args.batch,
                                      codec=args.codec, durability=durability)
        rows.append(row)
        print(f"insert {durability:<5} {args.n:,} x {dataset.dim} {args.codec}, batches of "
              f"{args.batch:,}: {row['insert_vectors_per_s']:,.0f} vectors/s with the final "
              f"flush on close ({row['add_s']:.2f} s of adds, {row['close_s']:.2f} s to close), "
              f"{row['disk_bytes'] / 2**20:,.1f} MiB on disk", flush=True)
    directory = root / rows[-1]["durability"]
    reopen = storage.measure_reopen(directory, dataset.queries, repeat=args.repeat)
    rows.append(reopen)
    log_rows = args.n // 10 if args.log_rows is None else args.log_rows
    storage.append_unflushed(directory, args.dataset, start=args.n, count=log_rows)
    replay = storage.measure_reopen(directory, dataset.queries, repeat=1)
    rows.append(replay)
    for row in (reopen, replay):
        print(f"reopen {row['rows']:,} rows ({row['segments']} segments, {row['log_rows']:,} "
              f"rows replayed from the log): {row['open_s']:.3f} s", flush=True)
    for row in rows:
        row.update(dataset=dataset.name, machine=machine_info())
    print(f"results: {write_results(rows, f'storage-{dataset.name}')}")
    return 0


def cpu_command(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    # turbovec reads its thread count when it loads: the same as every method's.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    from bench import cpu

    dataset = load_dataset(args.dataset)
    rows, by_path = cpu.measure(
        dataset, codecs=[c.strip() for c in args.codecs.split(",") if c.strip()], k=args.k,
        single=args.single, batch=args.batch, directory=Path(args.dir),
        peers=not args.no_peers, threads=args.threads, rounds=args.rounds, tile=args.tile,
        paths=not args.no_paths)
    print(f"{dataset.name}, {rows[0]['n']:,} rows, {args.threads} thread(s), best of "
          f"{args.rounds} interleaved rounds")
    for row in rows + by_path:
        row.update(dataset=dataset.name, k=args.k, machine=machine_info())
    for row in rows:
        recall = f"  recall@{args.k} {row['recall_single']:.3f}" if "recall_single" in row else ""
        rate = f"  {row['single_gb_per_s']:5.1f} GB/s" if "single_gb_per_s" in row else ""
        print(f"{row['method']:<22} {row['bytes_per_vector']:>7.1f} B  1 query/call "
              f"{row['single_qps']:>9,.1f} QPS{rate}  {args.batch}/call "
              f"{row['batch_qps']:>9,.1f} QPS{recall}", flush=True)
    for row in by_path:
        print(f"{row['method']:<22} path {row['path']:<7} 1 query/call "
              f"{row['single_qps']:>9,.1f} QPS")
    print(f"single-core read bandwidth {rows[0]['read_gb_per_s']:.1f} GB/s; scan path "
          f"{rows[0]['path']}")
    tag = f"cpu-{dataset.name}" + (f"-tile{args.tile}" if args.tile else "") + \
        f"-t{args.threads}"
    print(f"results: {write_results(rows + by_path, tag)}")
    return 0


def merge_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench import merge

    rows = []
    for name in [f.strip() for f in args.fanouts.split(",") if f.strip()]:
        fanout = None if name == "off" else int(name)
        row = merge.measure(Path(args.dir) / name, fanout, flushes=args.flushes,
                            rows=args.rows, dim=args.dim, codec=args.codec, k=args.k,
                            rounds=args.rounds, seed=args.seed)
        row["machine"] = machine_info()
        rows.append(row)
        print(f"fanout {name:>3}: {args.flushes} flushes of {args.rows} rows in "
              f"{row['write_s']:.1f} s; segments max {row['segments_max']}, "
              f"{row['segments_at_last_flush']} at the last flush, "
              f"{row['segments_settled']} settled; write amplification "
              f"{row['write_amplification']:.2f}; 1-query search {row['search_ms']:.2f} ms "
              f"vs {row['compacted_search_ms']:.2f} ms compacted "
              f"({row['latency_ratio']:.2f}x); during writes p50 "
              f"{row['search_during_writes_p50_ms']:.2f} ms, p99 "
              f"{row['search_during_writes_p99_ms']:.2f} ms "
              f"({row['searches_during_writes']} searches)", flush=True)
    print(f"results: {write_results(rows, 'merge')}")
    return 0


def load_command(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from bench import load

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    rows = load.run_load(url=args.url, serve=Path(args.serve) if args.serve else None,
                         device=args.device,
                         api_key=args.api_key or os.environ.get("VECSTORE_API_KEY"),
                         dataset=load_dataset(args.dataset), n=args.n, codec=args.codec,
                         batch=args.batch, levels=levels, duration=args.duration,
                         recall_queries=args.recall_queries)
    print(f"results: {write_results(rows, f'load-{args.dataset}')}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    peer_seeds = args.seeds if args.peer_seeds is None else args.peer_seeds
    if min(args.seeds, peer_seeds) < 1:
        raise SystemExit("--seeds and --peer-seeds must be >= 1")
    if args.rescore is not None:
        if args.rescore < 1:
            raise SystemExit("--rescore must be >= 1")
        try:
            check_rescore_support()
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
    dataset = load_dataset(args.dataset, max_queries=args.queries, max_base=args.base,
                           query_file=args.query_file, gt_file=args.gt_file)
    metric = args.metric or dataset.metric
    if args.codecs is None:
        specs = default_codecs(dataset.dim)
    elif args.codecs.strip().lower() == "none":
        specs = []
    else:
        specs = [s.strip() for s in args.codecs.split(",") if s.strip()]
    requested_peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    peers, notes = peer_specs(requested_peers, dataset.dim, metric, threads=args.threads)
    if peers and args.rescore:
        notes.append("--rescore applies to vecstore codecs; peers rank by their codes alone")
    for note in notes:
        print(f"note: {note}", flush=True)
    codec_seeds = list(range(args.seed, args.seed + args.seeds))
    methods = [(spec, partial(VecstoreMethod, spec, dataset.dim, rescore=args.rescore),
                codec_seeds) for spec in specs]
    methods += [(peer.name, peer.make, list(range(args.seed, args.seed + peer_seeds)))
                for peer in peers]
    if not methods:
        raise SystemExit("nothing to run: give --codecs or --peers")

    print(f"{dataset.name}: {dataset.base.shape[0]} base x {dataset.dim} d, "
          f"{dataset.queries.shape[0]} queries, metric {metric}, k={args.k}, "
          f"seeds {args.seed}..{codec_seeds[-1]} (peers {args.seed}.."
          f"{args.seed + peer_seeds - 1}), rescore {args.rescore or 'none'}", flush=True)
    dataset.ground_truth(metric)
    rows = []
    total = sum(len(seeds) if make(seeds[0]).seeded else 1 for _, make, seeds in methods)
    with threadpool_limits(limits=args.threads), \
            tqdm(total=total, desc="builds", unit="build", file=sys.stderr) as progress:
        for name, make, seeds in methods:
            progress.set_postfix_str(name)
            rows.append(run_method(make, dataset, metric=metric, k=args.k, seeds=seeds,
                                   single_queries=args.single_queries,
                                   on_seed_done=lambda _: progress.update(1)))
    for row in rows:
        row["threads"] = args.threads
    print(format_table(rows))
    path = write_results(rows, f"{dataset.name}-{metric}", args.out, check=validate_row)
    print(f"results: {path}")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    rows = load_rows(args.results)
    if not rows:
        raise SystemExit("no result rows in " + ", ".join(args.results))
    for path in plot_results(rows, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
