"""One runner for every benchmark (`streamrec bench all`): run each as a subprocess, collect its figures.

Each benchmark runs the way a person would run it (``python benchmarks/bench_x.py ...`` or a
``streamrec`` command) in its own process, against the stack of the ``STREAMREC_*`` settings, so a
crash or a hang of one is recorded (``ok: false`` with the error) and the runner goes on. Scripts
print one JSON line last (read from stdout); the evaluation commands write a report file (read
after they exit). A :class:`BenchSpec` names the command line and turns that raw output into
``figures`` / ``floor`` / ``ratio``.

A small world and a bundle trained on it are made once first (``streamrec generate`` /
``streamrec train``) and handed to every benchmark that needs them, so no benchmark trains its own.

Output in ``--out DIR``: ``results.json`` (machine, each benchmark's figures beside its floor, the
command line, seconds, ok/error), ``results.md`` (a table for the README), ``raw/NAME.json`` (each
benchmark's full output), ``logs/NAME.{out,err}``, and PNG plots (:mod:`tools.bench.plots`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from foundation.redis_io import redis_client_sync
from foundation.settings import get_settings
from tools.bench.plots import write_plots
from tools.bench.spec import REPO, BenchContext, BenchResult, BenchSpec, Summary

# --- reading outputs --------------------------------------------------------------------------------


def load_benchmark(name: str) -> ModuleType:
    """A script of ``benchmarks/`` (a folder of scripts, not a package) as a module, by file path.

    Raises :class:`FileNotFoundError` outside a source checkout, where ``benchmarks/`` is absent.
    """
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"streamrec_benchmarks_{name}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"{path} not found (benchmarks run from a source checkout)")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module



def last_json_line(text: str) -> dict[str, Any]:
    """The last line of ``text`` that is a JSON object (benchmarks print tables first, JSON last)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object line in the output")


def numeric_leaves(doc: Mapping[str, Any], prefix: str = "", limit: int = 40) -> dict[str, float]:
    """``{"a.b": 1.0}`` for the numbers in nested dicts (lists skipped), at most ``limit`` of them."""
    out: dict[str, float] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(numeric_leaves(value, f"{name}.", limit - len(out)))
        if len(out) >= limit:
            break
    return dict(list(out.items())[:limit])


def generic_summary(raw: dict[str, Any]) -> Summary:
    """For an output of unknown shape: numbers whose name holds ``floor`` are the floor, the first ``ratio*``
    number the ratio, every other number a figure."""
    leaves = numeric_leaves(raw)

    def is_ratio(key: str) -> bool:  # "ratio_to_floor" is a ratio, not a floor
        return key.rpartition(".")[2].startswith("ratio")

    ratios = [v for k, v in leaves.items() if is_ratio(k)]
    floor = {k: v for k, v in leaves.items() if "floor" in k and not is_ratio(k)}
    figures = {k: v for k, v in leaves.items() if k not in floor and not is_ratio(k)}
    return Summary(figures, floor, ratios[0] if ratios else None)


def _pick(raw: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: raw[k] for k in keys if raw.get(k) is not None}


def _round(value: Any, digits: int = 3) -> Any:
    return round(value, digits) if isinstance(value, float) else value


# --- each benchmark's reading of its output ---------------------------------------------------------

DECODE_CANDIDATE = "msgspec (schemas.decoder)"
DECODE_FLOOR = "floor: orjson.loads (no validation)"


def summarize_decode(raw: dict[str, Any]) -> Summary:
    rows = raw.get("results", {})
    if DECODE_CANDIDATE not in rows or DECODE_FLOOR not in rows:
        return generic_summary(raw)
    ours, floor = rows[DECODE_CANDIDATE], rows[DECODE_FLOOR]
    return Summary({"us_per_event": _round(ours["us_per_event"]), "events_per_s": round(ours["events_per_s"])},
                   {"orjson_us_per_event": _round(floor["us_per_event"])}, _round(ours["us_per_event"]
                                                                                  / floor["us_per_event"]))


def summarize_replay(raw: dict[str, Any]) -> Summary:
    if "replay_events_per_s" not in raw:
        return generic_summary(raw)
    return Summary({"replay_events_per_s": round(raw["replay_events_per_s"])},
                   {"aiokafka_events_per_s": round(raw["floor_events_per_s"])}, _round(raw.get("ratio_to_floor")))


def summarize_worker(raw: dict[str, Any]) -> Summary:
    if "worker_events_per_s" not in raw:
        return generic_summary(raw)
    return Summary(_pick(raw, "worker_events_per_s", "freshness_p50_ms", "freshness_p99_ms", "freshness_rate",
                         "item_state_staleness_p50_ms", "item_state_staleness_p99_ms", "item_state_records"),
                   {"raw_consume_events_per_s": raw.get("raw_events_per_s")}, _round(raw.get("worker_vs_raw")))


def summarize_serving(raw: dict[str, Any]) -> Summary:
    rates = raw.get("rates")
    if not isinstance(rates, list) or not rates:
        return generic_summary(raw)
    figures: dict[str, Any] = {}
    for row in rates:
        rate = f"{row['rate']:g}rps"
        figures[f"p50_ms@{rate}"] = _round(row.get("p50_ms"), 2)
        figures[f"p99_ms@{rate}"] = _round(row.get("p99_ms"), 2)
        figures[f"errors@{rate}"] = row.get("errors")
        figures[f"shed@{rate}"] = row.get("shed", 0)
    knee = raw.get("p99_over_50ms_at_rps")
    if isinstance(knee, dict):  # {"rps": r, "bound": "below" | "above" | ...}: r is a bound, not a crossing
        figures["p99_over_50ms_at_rps"] = knee.get("rps")
        figures["p99_over_50ms_bound"] = knee.get("bound")
    elif knee is not None:
        figures["p99_over_50ms_at_rps"] = knee
    figures.update(overload_figures(raw.get("overload")))
    floor = raw.get("floor") if isinstance(raw.get("floor"), dict) else {}
    floor = {k: _round(v, 3) for k, v in floor.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return Summary(figures, floor, _round(raw.get("p50_over_floor")))


def overload_figures(overload: Any) -> dict[str, Any]:
    """The overload bursts of bench_serving (``overload`` of its output) as flat figures: per burst ``@Nx``, the
    admitted p99, the shed share and time to shed, other non-200, recovery, the largest RSS ratio 10 s after over
    before (of the server processes) and the goals' verdict (``PASS``/``FAIL``)."""
    if not isinstance(overload, dict) or not overload.get("bursts"):
        return {}
    figures: dict[str, Any] = {"overload_capacity_rps": (overload.get("capacity") or {}).get("rps")}
    for burst in overload["bursts"]:
        at = f"@{burst['multiplier']:g}x"
        recovered = (burst.get("recovery") or {})
        ratios = [row.get("after_over_before") for row in (burst.get("rss") or {}).get("processes", [])]
        ratios = [r for r in ratios if isinstance(r, int | float)]
        figures.update({
            f"overload_achieved_rps{at}": burst.get("achieved_rps"),
            f"overload_admitted_p99_ms{at}": _round(burst.get("p99_ms"), 2),
            f"overload_shed_share{at}": burst.get("shed_share"),
            f"overload_shed_p99_ms{at}": _round(burst.get("shed_p99_ms"), 2),
            f"overload_other_non_200{at}": burst.get("other_non_200"),
            f"overload_recovered_s{at}": recovered.get("p99_recovered_s"),
            f"overload_rss_after_over_before{at}": max(ratios) if ratios else None,
            f"overload_goals{at}": "PASS" if burst.get("pass") else "FAIL",
        })
    return figures


def summarize_freshness(raw: dict[str, Any]) -> Summary:
    if "e2e_p50_ms" not in raw:
        return generic_summary(raw)
    return Summary(_pick(raw, "e2e_p50_ms", "e2e_p99_ms", "e2e_max_ms", "probes", "timeouts", "visible_before_commit",
                         "rate"),
                   _pick(raw, "floor_p50_ms", "redis_p50_ms", "http_rtt_p50_ms", "floor_p99_ms"),
                   _round(raw.get("ratio_p50")))


EVAL_FIGURES = ("recall@20", "ndcg@10")  # per system in results.json (the full table is in raw/eval.json)


def summarize_eval(raw: dict[str, Any]) -> Summary:
    systems = raw.get("systems")
    if not isinstance(systems, dict) or not systems:
        return generic_summary(raw)
    figures = {f"{name}.{metric}": _round(values[metric], 4)
               for name, values in systems.items() for metric in EVAL_FIGURES if metric in values}
    floor = {f"popularity.{m}": _round(systems["popularity"][m], 4)
             for m in ("ndcg@10", "recall@20") if m in systems.get("popularity", {})}
    best = "two_stage" if "two_stage" in systems else next(iter(systems))
    base = systems.get("popularity", {}).get("ndcg@10")
    ratio = _round(systems[best]["ndcg@10"] / base) if base else None
    return Summary(figures, floor, ratio)


def summarize_eval_stream(raw: dict[str, Any]) -> Summary:
    arms = raw.get("arms")
    if not isinstance(arms, dict) or "online" not in arms or "frozen" not in arms:
        return generic_summary(raw)
    metrics = [m for m in ("hr@10", "hr@20", "ndcg@10") if m in arms["online"]]
    figures = {f"online.{m}": _round(arms["online"][m], 4) for m in metrics}
    figures["probes"] = arms["online"].get("n")
    floor = {f"frozen.{m}": _round(arms["frozen"][m], 4) for m in metrics}
    frozen = arms["frozen"].get("hr@20")
    return Summary(figures, floor, _round(arms["online"]["hr@20"] / frozen) if frozen else None)


def default_specs() -> list[BenchSpec]:
    """The benchmarks of `bench all`, in order, with the sizes of a quick and a full run."""

    def decode(c: BenchContext) -> list[str]:
        size = ["--events", 20_000, "--repeats", 3] if c.quick else ["--events", 200_000, "--repeats", 5]
        return c.script("bench_decode.py", *size, "--log", c.world / "events.jsonl")

    def replay(c: BenchContext) -> list[str]:
        size = ["--events", 20_000, "--repeats", 1] if c.quick else ["--events", 200_000, "--repeats", 3]
        return c.script("bench_replay.py", *size, "--log", c.world)

    def worker(c: BenchContext) -> list[str]:
        fresh = ["--freshness-seconds", 3] if c.quick else []
        return c.script("bench_worker.py", "--log", c.world, "--artifacts", c.artifacts, *fresh)

    def serving(c: BenchContext) -> list[str]:
        return c.script("bench_serving.py", "--artifacts", c.artifacts, *(["--quick", "--seconds", 3] if c.quick
                                                                           else []))

    def freshness(c: BenchContext) -> list[str]:
        # Through its command (which runs benchmarks/bench_freshness.py), so `bench all` exercises both.
        return c.cli("bench", "freshness", "--data", c.world, "--artifacts", c.artifacts, "--out", c.raw("freshness"),
                     *(["--quick"] if c.quick else []))

    def evaluate(c: BenchContext) -> list[str]:
        return c.cli("eval", "--data", c.world, "--artifacts", c.artifacts, "--out", c.raw("eval"),
                     "--plots", c.out / "plots" / "eval")

    def eval_stream(c: BenchContext) -> list[str]:
        # Its own bundle root: eval-stream trains on the log's prefix (a bundle of the whole log would leak).
        # Its report goes to the work folder (it keeps a work folder beside the report); copied to raw/ after.
        return c.cli("eval-stream", "--data", c.world, "--artifacts", c.work / "artifacts-stream",
                     "--out", c.work / "eval-stream" / "report.json",
                     *(["--quick", "--samples", 100] if c.quick else []))

    return [
        BenchSpec("decode", decode, summarize_decode),
        BenchSpec("replay", replay, summarize_replay),
        BenchSpec("worker", worker, summarize_worker),
        BenchSpec("serving", serving, summarize_serving),
        BenchSpec("freshness", freshness, summarize_freshness, report=lambda c: c.raw("freshness")),
        BenchSpec("eval", evaluate, summarize_eval, report=lambda c: c.raw("eval")),
        BenchSpec("eval-stream", eval_stream, summarize_eval_stream,
                  report=lambda c: c.work / "eval-stream" / "report.json",
                  timeout_s=lambda quick: 240.0 if quick else 3600.0),
    ]


def setup_commands(ctx: BenchContext) -> list[tuple[str, list[str]]]:
    """The world and the bundle every benchmark shares (small in --quick: the whole run stays under 5 minutes)."""
    users, items, events = (500, 1000, 20_000) if ctx.quick else (3000, 3000, 200_000)
    return [
        ("generate", ctx.cli("generate", "--out", ctx.world, "--users", users, "--items", items,
                             "--events", events, "--seed", 7)),
        ("train", ctx.cli("train", "--data", ctx.world, "--out", ctx.artifacts, "--dim", 32,
                          "--rank-users", 200 if ctx.quick else 1000, "--epochs", 1 if ctx.quick else 4)),
    ]


# --- running ---------------------------------------------------------------------------------------

def _tail(text: str, n: int = 1500) -> str:
    return text[-n:].strip()


def _children_cpu_s() -> float:
    """CPU seconds of every waited-for child so far (a benchmark's worker and server included once it reaped them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, waiting to be reaped, do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _stop_group(proc: subprocess.Popen[str], grace_s: float = 30.0) -> None:
    """SIGTERM the command's process group (a benchmark's worker and server with it), SIGKILL what is left after
    ``grace_s``; returns once the whole group is gone, so nothing of it runs beside the next benchmark."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group the command leads (start_new_session): only what it started
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.05)
    proc.wait()


@dataclass(frozen=True, slots=True)
class CommandRun:
    stdout: str
    seconds: float  # wall clock
    cpu_seconds: float  # user + system of the command and what it reaped: the share of a busy machine it used
    error: str | None


def run_command(name: str, argv: Sequence[str], ctx: BenchContext, timeout_s: float,
                env: Mapping[str, str] | None = None) -> CommandRun:
    """Run one command in its own session, stdout and stderr to ``logs/NAME.{out,err}`` (followable while it runs).

    Past ``timeout_s`` its whole process group is stopped, so a hung benchmark leaves no worker or server behind.
    """
    logs = ctx.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    cpu_before = _children_cpu_s()
    started = time.perf_counter()
    timed_out = False
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(list(argv), cwd=REPO, env=dict(env) if env is not None else None, stdout=out,
                                stderr=err, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
        finally:
            # Interrupted (Ctrl-C), or exited leaving a worker or server behind: stop them before anything else runs.
            if proc.poll() is None or _group_alive(proc.pid):
                _stop_group(proc, grace_s=5.0)
    seconds = time.perf_counter() - started
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    cpu = round(_children_cpu_s() - cpu_before, 2)
    if timed_out:
        return CommandRun(stdout, seconds, cpu, f"timed out after {timeout_s:g} s; stderr: {_tail(stderr, 600)}")
    if proc.returncode != 0:
        return CommandRun(stdout, seconds, cpu, f"exit code {proc.returncode}: {_tail(stderr or stdout)}")
    return CommandRun(stdout, seconds, cpu, None)


def run_benchmark(spec: BenchSpec, ctx: BenchContext, env: Mapping[str, str] | None = None) -> BenchResult:
    """Run one benchmark and read its output; any failure is recorded in the result, never raised."""
    argv = spec.argv(ctx)
    command = shlex.join(argv)
    report = spec.report(ctx) if spec.report else None
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.unlink(missing_ok=True)  # a report left by an earlier run must not pass for this one's
    run = run_command(spec.name, argv, ctx, spec.timeout_s(ctx.quick), env)
    result = BenchResult(spec.name, command, run.seconds, ok=False, error=run.error, cpu_seconds=run.cpu_seconds)
    if run.error is not None:
        return result
    try:
        raw = json.loads(report.read_text()) if report is not None else last_json_line(run.stdout)
        if not isinstance(raw, dict):
            raise ValueError("the report is not a JSON object")
        summary = spec.summarize(raw)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        result.error = f"could not read the output: {type(exc).__name__}: {exc}"
        return result
    if not summary.figures:
        result.error = "the output holds no figures"
        return result
    result.ok, result.raw = True, raw
    result.figures, result.floor, result.ratio = summary.figures, summary.floor, summary.ratio
    raw_path = ctx.raw(spec.name)
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    if report is None or report.resolve() != raw_path.resolve():
        raw_path.write_text(json.dumps(raw, indent=2))
    return result


# --- the results document ----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _redis_version(settings: Any) -> str | None:
    try:
        client = redis_client_sync(settings, socket_timeout=2, socket_connect_timeout=2)
        try:
            return str(client.info("server").get("redis_version"))
        finally:
            client.close()
    except Exception:  # not reachable: the benchmarks that need it record their own failure
        return None


def _package_versions(names: Sequence[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(settings: Any) -> dict[str, Any]:
    """Where the figures were measured: CPU, cores, memory, Python, OS, Kafka and Redis versions."""
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
        # Figures from a shared machine are only comparable at a similar load.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "os": platform.platform(),
        "kafka": settings.kafka_version, "kafka_bootstrap": settings.kafka_bootstrap,
        "redis": _redis_version(settings),
        "packages": _package_versions(("aiokafka", "redis", "onnxruntime", "hnswlib", "numpy", "msgspec", "aiohttp")),
    }


def assemble(machine: dict[str, Any], started_at: str, quick: bool, results: Sequence[BenchResult],
             setup: Sequence[BenchResult] = ()) -> dict[str, Any]:
    """The ``results.json`` document."""
    return {
        "machine": machine, "started_at": started_at, "quick": quick,
        "setup": {r.name: {"command": r.command, "seconds": round(r.seconds, 2), "cpu_seconds": r.cpu_seconds,
                           "ok": r.ok, "error": r.error} for r in setup},
        "benchmarks": {r.name: r.to_json() for r in results},
        "ok": all(r.ok for r in results) and all(r.ok for r in setup),
    }


def display_command(command: str, folders: Mapping[str, str] | None = None) -> str:
    """A command as a person types it: ``python``/``streamrec`` for the interpreter, scripts relative to the
    repository, and each folder of ``folders`` (path -> name, e.g. the work dir -> ``$WORK``) by its name."""
    parts = shlex.split(command)
    if parts and parts[0] == sys.executable:
        parts[0] = "python"
    if parts[:3] == ["python", "-m", "streamrec.cli"]:
        parts = ["streamrec", *parts[3:]]
    if parts[:2] and parts[0] == "python" and parts[1].startswith(str(REPO) + os.sep):
        parts[1] = os.path.relpath(parts[1], REPO)
    text = shlex.join(parts)
    for path, name in (folders or {}).items():
        text = text.replace(path, name)
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def render_markdown(doc: Mapping[str, Any], folders: Mapping[str, str] | None = None) -> str:
    """``results.md``: one row per figure (value, the benchmark's floor and ratio on its first row, command)."""
    machine = doc.get("machine", {})
    lines = [
        f"Measured {doc.get('started_at', '')} on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"{machine.get('memory_gib', '?')} GiB, Python {machine.get('python', '?')}, "
        f"Kafka {machine.get('kafka', '?')}, "
        f"Redis {machine.get('redis', '?')}{' (quick run)' if doc.get('quick') else ''}; "
        f"{_fmt(doc.get('seconds'))} s in all, {_fmt(doc.get('cpu_seconds'))} CPU-seconds "
        f"(load average then {machine.get('load_average', '?')}).",
        "",
        "| benchmark | figure | value | floor (same run) | ratio | command |",
        "|---|---|---|---|---|---|",
    ]
    for name, bench in doc.get("benchmarks", {}).items():
        command = f"`{display_command(bench.get('command', ''), folders)}`"
        if not bench.get("ok"):
            error = str(bench.get("error") or "failed").replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| {name} | failed | {error} | | | {command} |")
            continue
        floor = "; ".join(f"{k} {_fmt(v)}" for k, v in bench.get("floor", {}).items())
        ratio = _fmt(bench.get("ratio"))
        for i, (figure, value) in enumerate(bench.get("figures", {}).items()):
            first = i == 0
            lines.append(f"| {name if first else ''} | {figure} | {_fmt(value)} | {floor if first else ''} | "
                         f"{ratio + '×' if first and ratio else ''} | {command if first else ''} |")
    return "\n".join(lines) + "\n"


# --- the whole run ---------------------------------------------------------------------------------


def run_all(out: Path, quick: bool, *, only: Sequence[str] | None = None, specs: Sequence[BenchSpec] | None = None,
            work: Path | None = None, env: Mapping[str, str] | None = None,
            say: Callable[[str], None] = lambda _m: None, plots: bool = True) -> dict[str, Any]:
    """Set up, run every benchmark (or ``only`` those), write results.json / results.md / plots; returns the doc."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    specs = list(specs if specs is not None else default_specs())
    if only:
        unknown = set(only) - {s.name for s in specs}
        if unknown:
            raise ValueError(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        specs = [s for s in specs if s.name in only]
    holder = None
    if work is None:
        holder = tempfile.TemporaryDirectory(prefix="streamrec-bench-")
        work = Path(holder.name)
    ctx = BenchContext(out=out, work=work.resolve(), quick=quick)
    try:
        setup: list[BenchResult] = []
        if any(s.needs_setup for s in specs):
            for name, argv in setup_commands(ctx):
                say(f"set-up: {name}")
                run = run_command(f"setup-{name}", argv, ctx, 600.0, env)
                setup.append(BenchResult(name, shlex.join(argv), run.seconds, ok=run.error is None, error=run.error,
                                         cpu_seconds=run.cpu_seconds))
                say(f"set-up: {name} {'ok' if run.error is None else 'FAILED: ' + run.error} ({run.seconds:.1f} s)")
                if run.error is not None:
                    break
        setup_failed = next((r for r in setup if not r.ok), None)
        results: list[BenchResult] = []
        for i, spec in enumerate(specs, 1):
            say(f"[{i}/{len(specs)}] {spec.name}")
            if spec.needs_setup and setup_failed is not None:
                result = BenchResult(spec.name, shlex.join(spec.argv(ctx)), 0.0, ok=False,
                                     error=f"set-up step {setup_failed.name} failed")
            else:
                result = run_benchmark(spec, ctx, env)
            results.append(result)
            say(f"[{i}/{len(specs)}] {spec.name}: {'ok' if result.ok else 'FAILED: ' + str(result.error)} "
                f"({result.seconds:.1f} s)")
        doc = assemble(machine_info(get_settings()), started_at, quick, results, setup)
        doc["seconds"] = round(sum(r.seconds for r in [*setup, *results]), 1)
        doc["cpu_seconds"] = round(sum(r.cpu_seconds or 0.0 for r in [*setup, *results]), 1)
        if plots:
            try:
                write_plots(results, out / "plots")
                # With those `streamrec eval --plots` drew (metric vs K, candidate recall).
                doc["plots"] = sorted(str(p.relative_to(out)) for p in (out / "plots").rglob("*.png"))
            except ImportError as exc:  # matplotlib comes with the train extra
                doc["plots_error"] = str(exc)
        (out / "results.json").write_text(json.dumps(doc, indent=2))
        (out / "results.md").write_text(render_markdown(doc, {str(ctx.work): "$WORK", str(out): "$OUT"}))
        return doc
    finally:
        if holder is not None:
            holder.cleanup()
