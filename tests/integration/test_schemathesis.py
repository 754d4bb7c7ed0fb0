"""The API against its own OpenAPI document: schemathesis, every check, a fixed seed, a real ``streamrec serve``.

Issue 11, item 7: the spec and the code agree. Schemathesis loads /openapi.json from the running server and sends
generated requests (examples, coverage, fuzzing and stateful phases, valid and invalid data) to every operation;
any finding of any check (``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``,
``response_schema_conformance``, ``response_headers_conformance``, ``ignored_auth``, ...) fails the test with the
findings listed. The server runs on the session's test stack (real Kafka and Redis, its credentials) with its own
topics and a static operator key that the client sends as ``X-API-Key``, as a deployment's writer would.

The CLI (a subprocess) rather than schemathesis' pytest plugin: the schema comes from a server that the test
starts, and one CLI run covers every phase (examples, coverage, fuzzing, stateful) with one seed, one exit code and
a JSON report whose counts are asserted. ``MAX_EXAMPLES`` bounds the fuzzing phase per operation: about 4,300
cases in all, 45-80 s of schemathesis on 2 busy cores (the whole test 80-135 s, most of the rest the small bundle's
training, shared with the other tests of the session). One deviation is accepted, by a hook
(tests/integration/schemathesis_hooks.py, which says why): a whole float such as ``7.0`` in an integer field.
The same server also gets a 100 KB path and a 100 KB header (raw sockets): JSON 414/431 that echo nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_worker_dead_letters import per_test_settings

from foundation.child_env import settings_env
from foundation.settings import Settings
from foundation.topics import ensure_topics_retrying
from tools.stack.probes import free_port

REPO = Path(__file__).resolve().parents[2]
HOOKS = Path(__file__).resolve().parent / "schemathesis_hooks.py"  # the one accepted deviation, explained there
API_KEY = "schemathesis-operator-key"  # the server's static key (every scope), sent with every request
SEED = 20_261_205
MAX_EXAMPLES = 400  # per operation, fuzzing phase; the other phases add their own cases
RUN_TIMEOUT_S = 240


@contextlib.contextmanager
def running_server(settings: Settings, base_env: dict[str, str], artifacts: Path, log_path: Path,
                   ready_s: float = 90) -> Iterator[str]:
    """``streamrec serve`` (one process) on a free port with ``settings``; yields its base URL once /readyz is 200.
    Stopped with SIGTERM afterwards; a non-zero exit fails the caller."""
    port = free_port()
    env = settings_env(settings, base=base_env)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "serve", "--artifacts", str(artifacts), "--port", str(port)],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + ready_s
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200 and json.loads(response.read())["events_producer"]:
                    break  # a 503 (not ready yet) raises HTTPError, an OSError
            assert child.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"streamrec serve was not ready in {ready_s} s:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
    assert code == 0, log_path.read_text()


def _oversized_requests_get_json_errors(url: str) -> None:
    """What the document cannot describe, checked on the served process (serving.protocol_errors, wired in by
    serving.http_server): a 100 KB path or header gets the JSON error shape and none of the input back."""
    host, port = url.removeprefix("http://").split(":")
    filler = b"Zq7" * 34_000
    for raw, status, field in [
        (b"GET /v1/recommendations/" + filler + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "path"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + filler + b"\r\n\r\n", 431, "headers"),
    ]:
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(raw)
            answer = b"".join(iter(lambda c=conn: c.recv(65536), b""))  # the server closes after these
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == str(status).encode(), answer[:300]
        assert b"application/json" in head.lower() and b"Zq7" not in body and b"bytearray" not in body, answer[:300]
        assert json.loads(body)["error"]["field"] == field


def _report(report_dir: Path) -> dict[str, Any]:
    """Schemathesis' JSON run report (one file per run)."""
    (path,) = report_dir.glob("json-*.json")
    return json.loads(path.read_text())


@pytest.mark.usefixtures("no_experiments_document")  # PUT /v1/experiments is fuzzed: leave no document behind
def test_the_api_conforms_to_its_openapi_document_under_every_check(
    stack: Settings, stack_env: dict[str, str], small_bundle: Path, tmp_path: Path
) -> None:
    settings = per_test_settings(stack, "schemathesis").model_copy(update={"api_key": API_KEY})
    asyncio.run(ensure_topics_retrying(settings))
    report_dir = tmp_path / "report"
    with running_server(settings, stack_env, small_bundle, tmp_path / "serve.log") as url:
        command = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
            "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
            "--header", f"X-API-Key: {API_KEY}", "--workers", "1", "--request-timeout", "10",
            "--generation-database", "none", "--no-color",
            "--report", "json,junit", "--report-dir", str(report_dir),
        ]
        _oversized_requests_get_json_errors(url)
        started = time.monotonic()
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                             env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)})
        elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found problems (exit {run.returncode}):\n{output[-20000:]}"
    report = _report(report_dir)
    cases = report["test_cases"]
    print(output[-2500:])
    print(f"schemathesis: {cases['generated']} cases over {report['operations']['tested']} operations in "
          f"{elapsed:.0f} s, {cases['with_failures']} with failures, {cases['errored']} errored, "
          f"{report['filtered']} filtered by the hooks")
    assert report["complete"] and report["operations"]["tested"] == report["operations"]["selected"] >= 6
    assert not report["failures"] and not report["errors"] and cases["errored"] == 0
    # Enough requests to mean something: the probe ran 9,485.
    assert cases["generated"] >= 6 * MAX_EXAMPLES, cases
