"""PNG plots of an evaluation report (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

from models.eval.metrics import BEYOND_K
from models.eval.report import EvalReport


def write_plots(report: EvalReport, out_dir: Path) -> list[Path]:
    """``recall_at_k.png`` and ``ndcg_at_k.png`` (metric vs K per system), ``candidate_recall.png``
    (recall per candidate source and their union) when the report has candidate recall, and
    ``popularity_bias.png`` (:func:`write_popularity_bias_plot`) when it has the bias metrics. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    caption = f"{report.split}: {report.test_users} test users, {report.positives} positives"
    for metric, label in (("recall", "recall@K"), ("ndcg", "NDCG@K")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, curves in report.curves.items():
            values = curves.get(metric, [])
            ax.plot(range(1, len(values) + 1), values, label=name, linewidth=1.8)
        for k in report.ks:
            ax.axvline(k, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlabel("K")
        ax.set_ylabel(label)
        ax.set_title(f"{label} ({caption})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric}_at_k.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    if report.candidate_recall:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        labels: list[str] = []
        values: list[float] = []
        for system, recalls in report.candidate_recall.items():
            prefix = f"{system}: " if len(report.candidate_recall) > 1 else ""
            for source, value in recalls.items():
                labels.append(prefix + source)
                values.append(value)
        colors = ["tab:orange" if label.endswith("union") else "tab:blue" for label in labels]
        bars = ax.bar(range(len(values)), values, color=colors)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_ylabel("share of test positives retrieved")
        ax.set_title(f"candidate recall per source ({caption})", fontsize=10)
        ax.set_ylim(0, max([*values, 0.01]) * 1.15)
        fig.tight_layout()
        path = out_dir / "candidate_recall.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    bias = write_popularity_bias_plot(report, out_dir)
    if bias is not None:
        written.append(bias)
    return written


def write_popularity_bias_plot(report: EvalReport, out_dir: Path, accuracy: str = "ndcg@10") -> Path | None:
    """``popularity_bias.png``: ``accuracy`` against ``top_title_share`` and against ``mean_pop_rank``, one
    point per system, so a system that buys accuracy by pushing the same hits to everybody stands out.
    None when no system in the report has the bias metrics."""
    systems = {name: row for name, row in report.systems.items()
               if accuracy in row and "top_title_share" in row and "mean_pop_rank" in row}
    if not systems:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    panels = (("top_title_share", "share of users given the most common title"),
              ("mean_pop_rank", "mean popularity rank of recommended titles (1 = most popular)"))
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for name, row in systems.items():
            ax.scatter(row[metric], row[accuracy], s=40)
            ax.annotate(name, (row[metric], row[accuracy]), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_xlim(0, 1.05)
    axes[1].set_xscale("log")  # ranks span 1 to the catalogue size
    axes[0].set_ylabel(accuracy)
    fig.suptitle(f"accuracy vs popularity bias ({report.split}: {report.test_users} test users, top "
                 f"{BEYOND_K})", fontsize=10)
    fig.tight_layout()
    path = out_dir / "popularity_bias.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
