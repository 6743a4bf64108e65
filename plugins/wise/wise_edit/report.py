"""Comparison of methods across stream lengths, rebuilt from result files alone.

``python -m wise_edit.report outputs/compare`` (or the Hydra multirun callback) reads every ``results.json``
under a directory and writes ``comparison.md`` (Rel/Gen/Loc/Avg per method and T), ``comparison.png``
(each metric against T, one line per method) and ``retention.png`` (Rel of each tenth of the stream, by
position, after the whole stream: the longest sequential run of each method).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .evaluation import PLOTTED, TITLES
from .results import markdown_table


def collect(root: str | Path) -> list[dict[str, Any]]:
    """One row per result file under ``root``: method, T, protocol, metrics, seconds per edit, source path, and
    the retention blocks where the file has them."""
    rows = []
    # glob's ``**`` follows symlinked directories (``Path.rglob`` does not before Python 3.13), so a directory of
    # links to chosen runs reports them
    for path in sorted(map(Path, glob.glob(glob.escape(str(root)) + "/**/results.json", recursive=True))):
        payload = json.loads(path.read_text())
        run = payload["config"]["run"]
        protocol = "seq" if payload.get("sequential_edit", run.get("sequential_edit")) else "T=1"
        rows.append({"method": payload["alg_name"], "T": int(run["ds_size"]), "protocol": protocol,
                     "data": run.get("data", {}).get("name", ""),
                     "prompts": "chat template" if run.get("use_chat_template") else "plain",
                     **payload["summary"],
                     "s/edit": payload["timing"]["seconds_per_edit"], "source": str(path.relative_to(root)),
                     "blocks": payload.get("blocks")})
    if not rows:
        raise FileNotFoundError(f"no results.json under {root}")
    return sorted(rows, key=lambda r: (r["data"], r["protocol"], r["prompts"], r["method"], r["T"]))


def _label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A plot's name for a row's method: with its benchmark and prompt form where the report mixes them."""
    extra = [row[k] for k in ("data", "prompts") if len({r[k] for r in rows}) > 1]
    return f"{row['method']} ({', '.join(extra)})" if extra else row["method"]


#: the summary names each benchmark is read by in the side-by-side table (as the WISE paper's tables)
BENCHMARK_COLUMNS = ("rel", "ppl", "gen", "ood", "loc", "nloc", "port")


def side_by_side(rows: list[dict[str, Any]]) -> str:
    """One row per method, one column group per benchmark at that benchmark's largest T (sequential runs with
    plain prompts): the three benchmarks read across, as the papers print them. Empty where a method has no run
    at that T."""
    groups = []
    for data in sorted({r["data"] for r in rows}):
        runs = [r for r in rows if r["data"] == data and r["protocol"] == "seq" and r["prompts"] == "plain"]
        if runs:
            size = max(r["T"] for r in runs)
            at_size = {r["method"]: r for r in runs if r["T"] == size}
            names = [m for m in BENCHMARK_COLUMNS if any(m in r for r in at_size.values())]
            groups.append((data, size, names, at_size))
    head = ["method"] + [f"{data} T={size} {name}" for data, size, names, _ in groups for name in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for method in sorted({r["method"] for r in rows}):
        cells = [method]
        for _, _, names, at_size in groups:
            row = at_size.get(method, {})
            cells += [f"{row[n]:.3f}" if isinstance(row.get(n), float) else "" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(root: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``comparison.png`` into ``root``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    rows = collect(root)
    mixed = len({r["prompts"] for r in rows}) > 1
    table = markdown_table(rows, keys=("method", "T", "protocol", "data", *(("prompts",) if mixed else ())))
    seconds = "\n".join(f"- {_label(r, rows)} T={r['T']} ({r['protocol']}): {r['s/edit']:.2f} s/edit, "
                        f"`{r['source']}`" for r in rows)
    markdown = root / "comparison.md"
    across = ""
    if len({r["data"] for r in rows}) > 1:
        across = f"The benchmarks side by side (each at its largest T):\n\n{side_by_side(rows)}\n\nEvery run:\n\n"
    markdown.write_text(f"{across}{table}\n\nSeconds per edit and source of each row:\n\n{seconds}\n")
    metrics = [m for m in PLOTTED if any(m in r for r in rows)]
    plot = root / "comparison.png"
    if len({r["T"] for r in rows}) == 1:
        _bar_plot(rows, metrics, plot, plt)
    else:
        _line_plot(rows, metrics, plot, plt)
    _retention_plot(rows, root, plt)
    return markdown, plot


def _line_plot(rows: list[dict[str, Any]], metrics: list[str], path: Path, plt: Any) -> None:
    """One panel per metric, each method's value against T: a method keeps its colour in every panel, a benchmark
    its line style, and one legend below the panels names every line."""
    cols = min(4, len(metrics))
    rows_n = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {m: palette[i % len(palette)] for i, m in enumerate(sorted({r["method"] for r in rows}))}
    styles = {d: ("-", "--", ":", "-.")[i % 4] for i, d in enumerate(sorted({r["data"] for r in rows}))}
    lines = {}
    for ax, metric in zip(axes.flat, metrics):
        for label in sorted({_label(r, rows) for r in rows}):
            mine = [r for r in rows if _label(r, rows) == label]
            points = sorted((r["T"], r[metric]) for r in mine if metric in r)
            if points:
                marker = "s" if mine[0]["prompts"] != "plain" else "o"
                lines[label] = ax.plot(*zip(*points), marker=marker, label=label, color=colours[mine[0]["method"]],
                                       linestyle=styles[mine[0]["data"]])[0]
        ax.set_xscale("log")
        ax.set_xlabel("T (edits)")
        ax.set_title(TITLES.get(metric, metric.capitalize()))
        if metric == "ppl":  # a perplexity, lower is better, unbounded: its own log axis
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * (len(lines) // 6), 1, 1))
    fig.legend(lines.values(), lines.keys(), loc="lower center", ncol=min(6, len(lines)), fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bar_plot(rows: list[dict[str, Any]], metrics: list[str], path: Path, plt: Any) -> None:
    """All runs at one T: a group of bars per metric, one bar per method (a line against T would be a dot)."""
    metrics = [m for m in metrics if m != "ppl"]  # bars share one [0, 1] axis; the table has the perplexity
    methods = sorted({_label(r, rows) for r in rows})
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(metrics) + 2), 3.6))
    for i, method in enumerate(methods):
        row = next(r for r in rows if _label(r, rows) == method)
        xs = [j + (i - (len(methods) - 1) / 2) * width for j, m in enumerate(metrics) if m in row]
        ax.bar(xs, [row[m] for m in metrics if m in row], width, label=method)
    ax.set_xticks(range(len(metrics)), [TITLES.get(m, m.capitalize()) for m in metrics], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"T = {rows[0]['T']}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(6, len(methods)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _retention_plot(rows: list[dict[str, Any]], root: Path, plt: Any) -> Path | None:
    """Rel by block of the longest sequential run of each (data, method) that records blocks."""
    longest: dict[tuple[str, str], tuple[int, list[dict[str, Any]]]] = {}
    for row in rows:
        if not row["blocks"] or row["protocol"] != "seq":
            continue
        key = (row["data"], _label(row, rows))
        if key not in longest or row["T"] > longest[key][0]:
            longest[key] = (row["T"], row["blocks"])
    if not longest:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (data, method), (size, blocks) in sorted(longest.items()):
        ax.plot([(b["first"] + b["last"]) / 2 for b in blocks], [b["rel"] for b in blocks], marker="o",
                label=f"{method} ({data}, T={size})")
    ax.set_xlabel("edit position in the stream")
    ax.set_ylabel("Rel after the whole stream")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = root / "retention.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; the report also works without it
    Callback = object  # type: ignore[assignment,misc]


class ComparisonCallback(Callback):  # type: ignore[misc]
    """Hydra callback: after a multirun, write the comparison of every run in the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        markdown, plot = write_report(config.hydra.sweep.dir)
        print(markdown.read_text())
        print(f"comparison: {markdown} {plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="directory holding result files (searched recursively)")
    markdown, plot = write_report(parser.parse_args().root)
    print(markdown.read_text())
    print(f"wrote {markdown} and {plot}")


if __name__ == "__main__":
    main()
