"""`streamrec eval-stream` end to end on a small generated world: real Kafka, a real worker, Redis, the
serving code. It checks that the protocol runs and its report is well formed (the quality figures are
a benchmark, not a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from foundation.redis_io import redis_client_sync
from foundation.settings import Settings


def test_eval_stream_reports_both_arms_and_leaves_its_topics_gone(stack: Settings, stack_env: dict[str, str],
                                                                    eval_world: Path, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "streamrec.cli"]
    out = tmp_path / "report.json"
    run = subprocess.run([*cli, "eval-stream", "--data", str(eval_world), "--artifacts", str(tmp_path / "artifacts"),
                          "--out", str(out), "--quick", "--samples", "60", "--window", "400",
                          "--online-db", "3", "--frozen-db", "4"],
                         env={**stack_env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    report = orjson.loads(out.read_bytes())
    for arm in ("online", "frozen"):
        figures = report["arms"][arm]
        assert set(figures) == {"hr@10", "hr@20", "ndcg@10", "n"}
        assert figures["n"] == 60
        assert 0.0 <= figures["hr@10"] <= figures["hr@20"] <= 1.0
        assert 0.0 <= figures["ndcg@10"] <= figures["hr@10"] + 1e-12
        assert report["degraded"][arm] == 0, report["degraded_reasons"]
        assert len(report["series"][arm]["hr@20"]) == len(report["series"]["n"])
    assert sum(report["series"]["n"]) == 60
    assert report["prefix_records"] > 0 and report["rest_records"] > 0
    assert Path(report["plot"]).stat().st_size > 0  # the curves (PNG)
    assert "online vs frozen" in run.stdout
    # The arms' Redis databases hold the state: the online one is ahead of the frozen one.
    online = redis_client_sync(stack, stack.redis_url.rsplit("/", 1)[0] + "/3")
    frozen = redis_client_sync(stack, stack.redis_url.rsplit("/", 1)[0] + "/4")
    try:
        assert online.dbsize() > 0 and frozen.dbsize() > 0
    finally:
        online.close()
        frozen.close()
    status = subprocess.run([*cli, "stack", "status", "--json"], env=stack_env, capture_output=True, text=True,
                            timeout=60, check=False)
    topics = orjson.loads(status.stdout)["topics"]
    assert not [t for t in topics if t.startswith("eval-")], topics  # the run's own topics are deleted
