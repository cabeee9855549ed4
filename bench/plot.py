"""Plots of result rows: recall@10 against bytes per vector and against batch QPS.

One pair of PNG files per data set and metric, one line per method family (vecstore
families solid, peers dashed), error bars from the standard deviation over seeds.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

from bench.schema import validate_row

PLOT_DIR = Path(__file__).resolve().parent / "results" / "plots"


def load_rows(paths: list[str | os.PathLike]) -> list[dict]:
    """The valid result rows of JSON-lines files, in file order.

    Lines that are not result rows (encoding timings, rows of an older layout) are skipped
    with one note per file on stderr. Raises ValueError for a line that is not JSON.
    """
    rows = []
    for path in paths:
        skipped = []
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number} is not JSON: {exc}") from exc
                try:
                    rows.append(validate_row(row))
                except ValueError as exc:
                    skipped.append(f"line {number}: {exc}")
        if skipped:
            print(f"{path}: skipped {len(skipped)} rows that are not result rows "
                  f"(first: {skipped[0]})", file=sys.stderr)
    return rows


def plot_results(rows: list[dict], out_dir: str | os.PathLike = PLOT_DIR) -> list[Path]:
    """Draw both plots for each (data set, metric, base size) of ``rows``.

    A method measured more than once keeps its latest row. Files are named
    ``<dataset>-<metric>-recall-vs-bytes.png`` and ``...-recall-vs-qps.png``, with the base
    size after the data set name when rows of one set have several base sizes.

    Returns
    -------
    The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, dict[tuple, dict]] = defaultdict(dict)
    for row in sorted(rows, key=lambda r: r["date"]):
        key = (row["dataset"], row["metric"], row["n_base"])
        groups[key][(row["method"], row["rescore"], row["k"])] = row
    sizes = defaultdict(set)
    for dataset, metric, n_base in groups:
        sizes[(dataset, metric)].add(n_base)

    written = []
    for (dataset, metric, n_base), by_method in sorted(groups.items()):
        group_rows = list(by_method.values())
        stem = dataset if len(sizes[(dataset, metric)]) == 1 else f"{dataset}-{n_base}"
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{metric}")
        title = _title(dataset, metric, group_rows)
        for x_key, x_label, suffix in (
            ("bytes_per_vector", "bytes per vector (codes + per-vector factors)", "bytes"),
            ("qps_batch", "queries per second (one batch)", "qps"),
        ):
            fig, ax = plt.subplots(figsize=(10, 6.5), layout="constrained")
            _draw(ax, group_rows, x_key)
            _log_axis(ax, base=2 if suffix == "bytes" else 10)
            ax.set_xlabel(x_label)
            ax.set_ylabel("recall@10")
            low = min(r["recall_at_10"] - r["recall_at_10_std"] for r in group_rows)
            ax.set_ylim(max(0.0, low - 0.03), 1.01)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(title, fontsize=10)
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                      title="family", title_fontsize=9)
            path = out_dir / f"{stem}-recall-vs-{suffix}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def _log_axis(ax, base: int) -> None:
    """A log-scaled x axis with plain-number labels at powers of ``base``."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log", base=base)
    ax.xaxis.set_major_locator(LogLocator(base=base))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _title(dataset: str, metric: str, rows: list[dict]) -> str:
    first = rows[0]
    seeds = max(len(row["seeds"]) for row in rows)
    return (f"{dataset} ({metric}): {first['n_base']:,} x {first['dim']}, "
            f"{first['n_queries']:,} queries, k={first['k']}, up to {seeds} seeds\n"
            f"{first['processor']} ({first['cpus']} cpus), {first['date'][:10]}")


def _draw(ax, rows: list[dict], x_key: str) -> None:
    """One line per family through its methods in order of bytes per vector; vecstore
    families first in the legend, then peers."""
    import matplotlib.pyplot as plt

    families: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        label = row["family"] + (f" (rescore {row['rescore']})" if row["rescore"] else "")
        families[label].append(row)
    order = sorted(families, key=lambda label: (families[label][0]["kind"] == "peer", label))
    palette = plt.get_cmap("tab20").colors
    colors = palette[0::2] + palette[1::2]
    markers = "osD^v<>pPX*h"
    for i, label in enumerate(order):
        members = sorted(families[label], key=lambda r: (r["bytes_per_vector"], r[x_key]))
        peer = members[0]["kind"] == "peer"
        ax.errorbar(
            [r[x_key] for r in members],
            [r["recall_at_10"] for r in members],
            yerr=[r["recall_at_10_std"] for r in members],
            label=label + (" (peer)" if peer else ""),
            color=colors[i % len(colors)],
            marker=markers[i % len(markers)],
            markersize=5,
            linestyle="--" if peer else "-",
            linewidth=1.2 if peer else 1.8,
            capsize=3,
        )
