"""The evaluation report: plain data that round-trips through JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from models.eval.metrics import MAX_K, METRIC_DEFINITIONS

# Columns of the printed table, in order (absent ones are skipped).
TABLE_COLUMNS: tuple[str, ...] = ("recall@10", "recall@20", "ndcg@10", "mrr", "coverage", "diversity",
                                  "top_title_share", "mean_pop_rank", "seconds")
# Columns printed with one decimal (seconds, ranks) rather than four.
_ONE_DECIMAL: frozenset[str] = frozenset({"seconds", "mean_pop_rank"})
_METRICS: frozenset[str] = frozenset({"mrr", "coverage", "diversity", "top_title_share", "mean_pop_rank",
                                      "seconds", "fit_seconds"})


@dataclass
class EvalReport:
    """Shape::

        {"split", "test_users", "positives", "train_events", "n_items", "ks", "max_k",
         "systems": {name: {"recall@10", "recall@20", "ndcg@10", "mrr", "coverage", "diversity",
                            "top_title_share", "mean_pop_rank",
                            "top_title": {"item": index or -1, "id", "title", "users": test users given it},
                            "seconds", ...more metrics and the system's extra}},
         "candidate_recall": {system: {source: recall, ..., "union": recall}},
         "curves": {name: {"recall": [K=1..50], "ndcg": [...], "recall_capped": [...]}},
         "definitions": {metric: how it is computed}}
    """

    split: str
    test_users: int
    positives: int
    train_events: int = 0
    n_items: int = 0
    ks: list[int] = field(default_factory=lambda: [10, 20])
    max_k: int = MAX_K
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)
    candidate_recall: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=lambda: dict(METRIC_DEFINITIONS))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        # OPT_SERIALIZE_NUMPY: a system's ``extra`` may hold numpy scalars.
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.to_json())
        tmp.replace(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def read(cls, path: Path) -> EvalReport:
        return cls.from_dict(orjson.loads(path.read_bytes()))


def report_table(report: EvalReport) -> Any:
    """A rich Table of the systems (a caption with the split, test users and positives)."""
    from rich.table import Table

    table = Table(title=f"offline evaluation ({report.split})",
                  caption=f"{report.test_users} test users, {report.positives} positives, "
                          f"{report.train_events} training events, {report.n_items} items")
    columns = [c for c in TABLE_COLUMNS if any(c in row for row in report.systems.values())]
    table.add_column("system", style="bold")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("notes")
    for name, row in report.systems.items():
        cells = [("" if c not in row else f"{row[c]:.1f}" if c in _ONE_DECIMAL else f"{row[c]:.4f}")
                 for c in columns]
        notes = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in row.items() if _is_note(k, v))
        table.add_row(name, *cells, notes)
    for system, recalls in report.candidate_recall.items():
        text = ", ".join(f"{source}={value:.3f}" for source, value in recalls.items())
        table.add_row(f"{system} candidates", *[""] * len(columns), text)
    return table


def _is_note(key: str, value: Any) -> bool:
    """A system's extra worth a table cell: a scalar that is not a metric (dicts stay in the JSON)."""
    metric = "@" in key or key in _METRICS
    return not metric and isinstance(value, str | int | float | bool)


# The personalisation table (issue 14): accuracy beside how alike the systems' answers are across users.
# (report key, header); ``distinct`` titles and the top title's name are added beside coverage and the share.
PERSONALISATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ndcg@10", "NDCG@10"), ("coverage", "coverage@10"), ("top_title_share", "top share"),
    ("mean_pop_rank", "avg popularity rank"))


def personalisation_rows(report: EvalReport) -> list[dict[str, Any]]:
    """One dict per system: the :data:`PERSONALISATION_COLUMNS` metrics (None when absent), the number of
    distinct titles in the top 10s (``coverage`` x catalogue size) and the most common title's name, training
    popularity rank and number of test users holding it as a positive (None when the report lacks them)."""
    rows = []
    for name, row in report.systems.items():
        out: dict[str, Any] = {"system": name, **{key: row.get(key) for key, _ in PERSONALISATION_COLUMNS}}
        coverage = row.get("coverage")
        out["distinct_titles"] = round(coverage * report.n_items) if coverage is not None and report.n_items else None
        top = row.get("top_title") or {}
        out["top_title"] = top.get("title")
        # Is the title everybody gets a head title or the one many test users really go on to watch?
        out["top_title_pop_rank"] = top.get("pop_rank")
        out["top_title_positives"] = top.get("positives")
        rows.append(out)
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    def fmt(key: str, spec: str) -> str:
        return "" if row.get(key) is None else format(row[key], spec)

    coverage = fmt("coverage", ".4f")
    if row.get("distinct_titles") is not None:
        coverage += f" ({row['distinct_titles']} titles)"
    share = fmt("top_title_share", ".1%")
    if row.get("top_title"):
        share += f" ({row['top_title']})"
    return [fmt("ndcg@10", ".4f"), coverage, share, fmt("mean_pop_rank", ".1f")]


def personalisation_table(report: EvalReport) -> Any:
    """A rich Table of :func:`personalisation_rows` (the README's personalisation figure)."""
    from rich.table import Table

    table = Table(title=f"personalisation ({report.split}, top 10s of {report.test_users} test users)",
                  caption=f"{report.n_items} titles, {report.train_events} training events; coverage@10: distinct "
                          "titles in any top 10 / catalogue; top share: users whose top 10 holds the most common "
                          "title; avg popularity rank: 1 = the title with the most training users")
    table.add_column("system", style="bold")
    for _, header in PERSONALISATION_COLUMNS:
        table.add_column(header, justify="right")
    for row in personalisation_rows(report):
        table.add_row(row["system"], *_cells(row))
    return table


def personalisation_markdown(report: EvalReport) -> str:
    """:func:`personalisation_rows` as a Markdown table (for the README)."""
    header = ["system", *(title for _, title in PERSONALISATION_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in personalisation_rows(report):
        lines.append("| " + " | ".join([row["system"], *_cells(row)]) + " |")
    return "\n".join(lines)


def personalisation_check(report: EvalReport, system: str = "two_stage", reference: str = "ease"
                          ) -> dict[str, bool | None]:
    """Is ``system`` at least as diverse across users as ``reference`` (coverage not lower, top share not
    higher, recommended titles not more popular on average) while ahead on NDCG@10? None where either row
    lacks the metric or the system."""
    mine, theirs = report.systems.get(system, {}), report.systems.get(reference, {})

    def compare(key: str, better: Any) -> bool | None:
        if key not in mine or key not in theirs:
            return None
        return bool(better(mine[key], theirs[key]))

    out = {"ndcg_lead": compare("ndcg@10", lambda a, b: a > b),
           "coverage_not_lower": compare("coverage", lambda a, b: a >= b),
           "top_share_not_higher": compare("top_title_share", lambda a, b: a <= b),
           "pop_rank_not_lower": compare("mean_pop_rank", lambda a, b: a >= b)}
    known = [value for value in out.values() if value is not None]
    out["holds"] = all(known) if len(known) == len(out) else None
    return out
