"""The console script end to end against the real stack: generate, replay, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from foundation.settings import Settings
from schemas import EventError, decode_event
from tools.stack import process
from tools.stack.layout import StackLayout
from tools.stack.probes import free_port

STREAMREC = [sys.executable, "-m", "streamrec.cli"]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**env, "COLUMNS": "200"}  # wide enough that rich does not elide topic names
    return subprocess.run([*STREAMREC, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def scoped_env(stack_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Topics of this test only, created by `stack topics` (the command for existing clusters)."""
    suffix = tmp_path.name[-12:].replace("_", "-")
    env = {**stack_env, "STREAMREC_TOPIC_INTERACTIONS": f"interactions-{suffix}",
           "STREAMREC_TOPIC_CATALOG": f"catalog-{suffix}", "STREAMREC_TOPIC_ITEM_VECTORS": f"vectors-{suffix}",
           "STREAMREC_TOPIC_DEAD_LETTERS": f"dead-{suffix}"}
    created = run_cli(["stack", "topics"], env)
    assert created.returncode == 0, created.stderr
    assert f"interactions-{suffix}" in created.stdout
    again = run_cli(["stack", "topics"], env)
    assert "none (all existed)" in again.stdout
    return env


def test_generate_then_replay_with_malformed_lines(scoped_env: dict[str, str], tmp_path: Path, stack: Settings):
    world = tmp_path / "world"
    generated = run_cli(["generate", "--out", str(world), "--users", "40", "--items", "300", "--events", "3000",
                         "--seed", "5", "--malformed-rate", "0.02"], scoped_env)
    assert generated.returncode == 0, generated.stderr
    summary = json.loads((world / "world.json").read_text())
    events_lines = (world / "events.jsonl").read_bytes().splitlines()
    catalog_lines = (world / "catalog.jsonl").read_bytes().splitlines()
    assert len(events_lines) == 3000

    replayed = run_cli(["replay", str(world), "--json"], scoped_env)
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    malformed = sum(1 for line in events_lines if _invalid(line))
    assert malformed > 0 and report["rejected"] == malformed
    assert report["published"] == len(events_lines) - malformed + len(catalog_lines)
    assert report["per_topic"][scoped_env["STREAMREC_TOPIC_CATALOG"]] == len(catalog_lines)
    rejects = (world / "rejects.jsonl").read_bytes().splitlines()
    assert len(rejects) == malformed
    assert all(orjson.loads(row)["reason"] for row in rejects)
    assert summary  # world.json is written and parses


def _invalid(line: bytes) -> bool:
    try:
        decode_event(line)
    except EventError:
        return True
    return False


def test_demo_runs_the_whole_system_and_down_leaves_nothing_behind(
    stack_factory: Callable[..., Settings], env_for: Callable[[Settings], dict[str, str]], tmp_path: Path
) -> None:
    # A stack of its own: `demo --down` stops the stack too, which must not be the session's.
    settings = stack_factory("demo", 21092, 21093, 18379)  # 2000 above the session's ports (see test_stack)
    env = {**env_for(settings), "STREAMREC_SERVER_PORT": str(free_port())}
    args = ["demo", "--data", str(tmp_path / "demo"), "--users", "60", "--items", "300", "--events", "4000",
            "--artifacts", str(tmp_path / "artifacts"), "--show-users", "1", "--worker-metrics-port", "0"]
    done = run_cli(args, env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "trained bundle" in out and "published" in out and "the worker has applied every record" in out
    assert "plays and completes" in out and "before" in out and "after" in out
    assert "the new answer was visible" in out and "not within" not in out, out[-3000:]
    assert "streamrec demo --down" in out
    # The shipped experiment runs on the demo's server, and the demo says how to simulate users and report it.
    assert "deploy/experiments.toml runs on this server" in out and "streamrec experiments report ranker" in out
    # Writes need a key: the demo made one (its own POSTs above used it), printed it and kept it for the user.
    key_file = settings.state_dir / "demo-api-key"
    key = key_file.read_text().strip()
    assert key.startswith("srk_") and f"API key  {key}" in out and (key_file.stat().st_mode & 0o777) == 0o600
    run_dir = StackLayout.from_settings(settings).run_dir
    records = [process.read_record(run_dir / f"demo-{name}.json") for name in ("worker", "server")]
    assert all(r is not None and process.owns(r) for r in records), "the demo must leave its apps running"

    # A second run reuses the log and the bundle and does not publish the log twice.
    again = run_cli(args, env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "reused bundle" in again.stdout and "already replayed" in again.stdout

    stack_records = [process.read_record(p) for p in sorted(run_dir.glob("*.json"))]
    down = run_cli(["demo", "--down"], env)
    assert down.returncode == 0, down.stderr
    assert all(not process.owns(r) for r in [*records, *stack_records] if r is not None)
    assert not list(run_dir.glob("*.json")), "every pid file is removed"


def test_import_refuses_a_folder_that_is_not_movielens(tmp_path: Path, stack_env: dict[str, str]):
    (tmp_path / "notes.txt").write_text("hello")
    result = run_cli(["import", "movielens", str(tmp_path), "--out", str(tmp_path / "out")], stack_env)
    assert result.returncode == 2
    assert "not a MovieLens directory" in result.stderr
