"""PNG plots of a `streamrec bench all` run (matplotlib, Agg; matplotlib comes with the ``train`` extra).

Each plot is drawn only when its benchmark ran and its output has what the plot needs:

- ``serving_latency.png``: p50 / p99 / p99.9 of GET /v1/recommendations against the offered rate;
- ``freshness_hist.png``: produce -> visible through HTTP, beside produce -> Redis commit (the floor);
- ``latency_hist.png``: serving latency samples, when the serving benchmark hands any back;
- ``throughput.png``: decode, replay and worker events/s beside their floors (log scale);
- ``quality.png``: the offline evaluation table (``streamrec eval``) as a figure;
- ``eval_stream.png``: online vs frozen curves (the PNG ``eval-stream`` draws, or drawn from its series).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.spec import BenchResult

QUALITY_METRICS = ("recall@10", "recall@20", "ndcg@10", "mrr", "coverage")  # the quality plot's columns


def _pyplot() -> Any:
    # Lazy: matplotlib is optional (the train extra) and slow to import; only drawing needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def serving_latency(raw: dict[str, Any], path: Path) -> Path | None:
    rates = [r for r in raw.get("rates") or [] if isinstance(r, dict) and "rate" in r]
    if not rates:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = [r["rate"] for r in rates]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        if all(key in r for r in rates):
            ax.plot(x, [r[key] for r in rates], "-o", label=label)
    floor = (raw.get("floor") or {}).get("floor_ms")
    if isinstance(floor, int | float):
        ax.axhline(floor, color="grey", ls="--", label=f"floor {floor:.1f} ms")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("GET /v1/recommendations: latency percentiles vs rate")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _histogram(series: dict[str, Sequence[float]], title: str, xlabel: str, path: Path) -> Path | None:
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    # One set of bins for every series, so their bars line up and compare.
    everything = np.concatenate([np.asarray(v, float) for v in series.values()])
    bins = np.histogram_bin_edges(everything, bins=min(40, max(5, len(everything) // 4)))
    for label, values in series.items():
        ax.hist(values, bins=bins, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def throughput(results: dict[str, BenchResult], path: Path) -> Path | None:
    bars: list[tuple[str, float, float]] = []  # (label, figure, floor)
    pairs = {"decode": ("events_per_s", None), "replay": ("replay_events_per_s", "aiokafka_events_per_s"),
             "worker": ("worker_events_per_s", "raw_consume_events_per_s")}
    for name, (figure, floor_key) in pairs.items():
        r = results.get(name)
        if r is None or not r.ok or figure not in r.figures:
            continue
        if floor_key is None:  # decode's floor is given per event
            us = r.floor.get("orjson_us_per_event")
            floor = 1e6 / us if us else None
        else:
            floor = r.floor.get(floor_key)
        if floor:
            bars.append((name, float(r.figures[figure]), float(floor)))
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = range(len(bars))
    ax.bar([i - 0.2 for i in x], [b[1] for b in bars], width=0.4, label="streamrec")
    ax.bar([i + 0.2 for i in x], [b[2] for b in bars], width=0.4, label="floor (same run)")
    ax.set_xticks(list(x), [b[0] for b in bars])
    ax.set_yscale("log")
    ax.set_ylabel("events/s")
    ax.set_title("throughput vs floor")
    ax.legend()
    return _save(fig, path)


def quality_table(raw: dict[str, Any], path: Path) -> Path | None:
    systems = raw.get("systems")
    if not isinstance(systems, dict) or not systems:
        return None
    plt = _pyplot()
    rows = [[name, *(f"{v[m]:.4f}" if isinstance(v.get(m), int | float) else "" for m in QUALITY_METRICS)]
            for name, v in systems.items() if isinstance(v, dict)]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.35 * len(rows)))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["system", *QUALITY_METRICS], loc="center")
    table.scale(1, 1.3)
    ax.set_title(f"offline evaluation ({raw.get('split', '')}, {raw.get('test_users', '?')} test users)")
    return _save(fig, path)


def eval_stream_curves(raw: dict[str, Any], path: Path) -> Path | None:
    drawn = raw.get("plot")
    if isinstance(drawn, str) and Path(drawn).is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(drawn, path)
        return path
    series = raw.get("series")
    if not isinstance(series, dict) or "online" not in series or "frozen" not in series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, style in (("online", "-o"), ("frozen", "--s")):
        values = series[arm].get("hr@20") if isinstance(series[arm], dict) else None
        if values:
            ax.plot(range(1, len(values) + 1), values, style, label=arm)
    ax.set_xlabel("window of the replayed part")
    ax.set_ylabel("hr@20")
    ax.set_title("online vs frozen")
    ax.legend()
    return _save(fig, path)


def write_plots(results: Sequence[BenchResult], out: Path) -> list[Path]:
    """Every plot the results allow, into ``out``; returns their paths."""
    by_name = {r.name: r for r in results}

    def raw(name: str) -> dict[str, Any]:
        r = by_name.get(name)
        return r.raw or {} if r is not None and r.ok else {}

    fresh = raw("freshness")
    serving = raw("serving")
    samples = serving.get("samples_ms") or serving.get("latency_samples_ms")
    made = [
        serving_latency(serving, out / "serving_latency.png"),
        _histogram({"produce -> visible via HTTP": fresh.get("samples_ms") or [],
                    "produce -> Redis commit (floor)": fresh.get("floor_samples_ms") or []},
                   "freshness", "ms", out / "freshness_hist.png"),
        _histogram({"GET /v1/recommendations": samples if isinstance(samples, list) else []},
                   "serving latency", "ms", out / "latency_hist.png"),
        throughput(by_name, out / "throughput.png"),
        quality_table(raw("eval"), out / "quality.png"),
        eval_stream_curves(raw("eval-stream"), out / "eval_stream.png"),
    ]
    return [p for p in made if p is not None]
