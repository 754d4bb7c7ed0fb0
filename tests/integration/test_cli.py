"""The console script end to end against the real stack: generate, replay, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streamrec.settings import Settings

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
    from schemas import EventError, decode_event

    try:
        decode_event(line)
    except EventError:
        return True
    return False


def test_demo_runs_the_main_job_and_reports_what_landed(scoped_env: dict[str, str], tmp_path: Path):
    data = tmp_path / "demo"
    done = run_cli(["demo", "--data", str(data), "--users", "30", "--items", "200", "--events", "2000"], scoped_env)
    assert done.returncode == 0, done.stderr
    assert "what landed" in done.stdout
    landed = [line for line in done.stdout.splitlines() if scoped_env["STREAMREC_TOPIC_INTERACTIONS"] in line]
    assert any("2,000" in line for line in landed), done.stdout  # every generated event landed
    # A second run reuses the log and publishes it again: the demo is re-runnable.
    again = run_cli(["demo", "--data", str(data), "--users", "30", "--items", "200", "--events", "2000"], scoped_env)
    assert again.returncode == 0 and "reused" in again.stdout


def test_import_refuses_a_folder_that_is_not_movielens(tmp_path: Path, stack_env: dict[str, str]):
    (tmp_path / "notes.txt").write_text("hello")
    result = run_cli(["import", "movielens", str(tmp_path), "--out", str(tmp_path / "out")], stack_env)
    assert result.returncode == 2
    assert "not a MovieLens directory" in result.stderr
