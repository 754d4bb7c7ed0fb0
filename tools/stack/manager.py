"""``up`` / ``down`` / ``status`` of the local stack (Kafka broker + redis-server), with typed results.

- :func:`up` starts what is not running (idempotent), waits until both answer, creates the topics.
  If anything fails it stops the processes it started itself, so a failed ``up`` leaves the stack as
  it found it.
- :func:`down` stops exactly the processes recorded in the pid files, after checking that each pid
  still is the process that was started (see :mod:`tools.stack.process`).
- :func:`status` reports, per service, whether our process runs and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foundation.kafka_io import make_admin
from foundation.logs import get_logger
from foundation.settings import Settings
from foundation.topics import TopicSetupError, ensure_topics
from tools.stack import credentials as stack_credentials
from tools.stack import kafka, probes, process
from tools.stack import redis as redis_service
from tools.stack import tls as stack_tls
from tools.stack.credentials import StackCredentials
from tools.stack.errors import StackError
from tools.stack.kafka import Progress
from tools.stack.layout import StackLayout
from tools.stack.process import ProcessRecord, StopOutcome

log = get_logger(__name__)

HOST = "127.0.0.1"
KAFKA_START_TIMEOUT_S = 180.0
REDIS_START_TIMEOUT_S = 30.0
KAFKA_STOP_TIMEOUT_S = 60.0
REDIS_STOP_TIMEOUT_S = 30.0


def _no_progress(_message: str) -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext()


# --- Typed results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool  # a process this stack started is alive (pid verified)
    healthy: bool  # ... and it answers (Kafka metadata / Redis PING)
    pid: int | None
    detail: str
    log_file: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StackStatus:
    state_dir: str
    services: tuple[ServiceStatus, ...]
    topics: tuple[str, ...] = ()
    kafka_version: str = ""
    # Where the stack's generated credentials are ("" when it runs without them): the path, never a secret.
    credentials_file: str = ""

    @property
    def healthy(self) -> bool:
        return all(service.healthy for service in self.services)

    def service(self, name: str) -> ServiceStatus:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "state_dir": self.state_dir,
            "kafka_version": self.kafka_version,
            "services": {service.name: service.to_dict() for service in self.services},
            "topics": list(self.topics),
            "credentials_file": self.credentials_file,
        }


@dataclass(frozen=True)
class UpResult:
    status: StackStatus
    started: tuple[str, ...]
    already_running: tuple[str, ...]
    created_topics: tuple[str, ...]
    seconds: float
    # The caller's settings plus the stack's credentials: what processes started next must use (the caller's
    # own were read before a first `up` wrote credentials.env).
    settings: Settings


@dataclass(frozen=True)
class StopResult:
    name: str
    outcome: StopOutcome
    pid: int | None


@dataclass(frozen=True)
class DownResult:
    stopped: tuple[StopResult, ...] = field(default_factory=tuple)


# --- Services ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Service:
    name: str
    pid_file: Path
    ports: tuple[tuple[str, int], ...]  # (what, port) pairs that must be free to start
    address: str
    log_file: Path
    probe: Callable[[], Awaitable[probes.Probe]]
    excerpt: Callable[[], str]
    start_timeout_s: float
    stop_timeout_s: float


def _services(settings: Settings, layout: StackLayout) -> tuple[_Service, _Service]:
    kafka_service = _Service(
        name="kafka",
        pid_file=layout.kafka_pid_file,
        ports=(("Kafka", settings.kafka_port), ("Kafka controller", settings.kafka_controller_port)),
        address=f"{HOST}:{settings.kafka_port}",
        log_file=layout.kafka_server_log,
        probe=lambda: probes.kafka_answers(settings, HOST),
        excerpt=lambda: kafka.log_excerpt(layout),
        start_timeout_s=KAFKA_START_TIMEOUT_S,
        stop_timeout_s=KAFKA_STOP_TIMEOUT_S,
    )
    redis_svc = _Service(
        name="redis",
        pid_file=layout.redis_pid_file,
        ports=(("Redis", settings.redis_port),),
        address=f"{HOST}:{settings.redis_port}",
        log_file=layout.redis_log,
        probe=lambda: probes.redis_answers(settings, HOST),
        excerpt=lambda: redis_service.log_excerpt(layout),
        start_timeout_s=REDIS_START_TIMEOUT_S,
        stop_timeout_s=REDIS_STOP_TIMEOUT_S,
    )
    return kafka_service, redis_svc


def _running_record(service: _Service) -> ProcessRecord | None:
    """The pid record when its process is alive and ours; a stale pid file is removed."""
    record = process.read_record(service.pid_file)
    if record is None:
        return None
    if process.owns(record):
        return record
    log.info("stack.pidfile.stale", service=service.name, pid=record.pid)
    service.pid_file.unlink(missing_ok=True)
    return None


def _check_ports_free(service: _Service, layout: StackLayout) -> None:
    for what, port in service.ports:
        if probes.port_open(HOST, port):
            raise StackError(
                f"{what} port {port} is already in use by a process that `streamrec stack` did not start "
                f"from {layout.root} (another stack, or a system service?). Stop it, or choose other ports "
                "(STREAMREC_KAFKA_BOOTSTRAP, STREAMREC_KAFKA_CONTROLLER_PORT, STREAMREC_REDIS_URL)."
            )


async def _wait_ready(service: _Service, record: ProcessRecord) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.start_timeout_s
    while True:
        if process.exited(record):
            raise StackError(f"{service.name} (pid {record.pid}) exited while starting.\n{service.excerpt()}")
        result = await service.probe()
        if result.ok:
            log.debug("stack.ready", service=service.name, detail=result.detail)
            return
        if loop.time() > deadline:
            raise StackError(
                f"{service.name} did not answer on {service.address} within {service.start_timeout_s:.0f}s "
                f"({result.detail}).\n{service.excerpt()}"
            )
        await asyncio.sleep(0.5)


# --- up / down / status ------------------------------------------------------------------------


async def up(settings: Settings, *, progress: Progress = _no_progress) -> UpResult:
    """Start the broker and redis-server unless they run, wait until they answer, create the topics."""
    layout = StackLayout.from_settings(settings)
    layout.make_dirs()
    with process.file_lock(layout.lock_file):  # a concurrent `up`/`down` of this stack waits
        return await _up(settings, layout, progress)


def _security(
    settings: Settings, layout: StackLayout, starting_all: bool
) -> tuple[StackCredentials | None, stack_tls.TlsFiles | None]:
    """The stack's credentials (made once, kept in credentials.env) and TLS files, per ``stack_auth``/``stack_tls``."""
    if not settings.stack_auth:
        if settings.stack_tls:
            raise StackError("stack_tls needs stack_auth (TLS without a login is not offered)")
        if starting_all:  # clients of this state dir must not log in to a plaintext stack
            stack_credentials.remove(layout)
        log.warning("stack.auth.off", detail="Redis without a password, Kafka in PLAINTEXT (stack_auth=false)")
        return None, None
    if not starting_all and stack_credentials.load(layout) is None:
        # Services from before credentials existed run plaintext: clients must not be told to log in to them.
        log.warning("stack.auth.restart_needed", state_dir=str(layout.root),
                    detail="running without credentials; `streamrec stack down` then `up` protects it")
        return None, None
    tls = stack_tls.ensure(layout) if settings.stack_tls else None
    return stack_credentials.ensure(settings, layout, str(tls.ca_cert) if tls else ""), tls


async def _up(settings: Settings, layout: StackLayout, progress: Progress) -> UpResult:
    begun = time.monotonic()
    kafka_service, redis_svc = _services(settings, layout)

    records: dict[str, ProcessRecord] = {}
    already: list[str] = []
    for service in (kafka_service, redis_svc):
        record = _running_record(service)
        if record is None:
            continue
        expected_port = service.ports[0][1]
        if record.port != expected_port:
            raise StackError(
                f"{service.name} of {layout.root} runs on port {record.port}, but the settings say "
                f"{expected_port}: run `streamrec stack down` first"
            )
        records[service.name] = record
        already.append(service.name)

    # Everything that can fail fast is checked before anything starts.
    to_start = [s for s in (kafka_service, redis_svc) if s.name not in records]
    credentials, tls = _security(settings, layout, starting_all=len(to_start) == 2)
    # The probes and the topic set-up below connect as this stack expects: logged in, or plaintext.
    settings = credentials.apply(settings) if credentials is not None else stack_credentials.plaintext(settings)
    kafka_service, redis_svc = _services(settings, layout)
    to_start = [s for s in (kafka_service, redis_svc) if s.name not in records]
    redis_server = java = libs = None
    if redis_svc in to_start:
        redis_server = redis_service.find_redis_server()
    if kafka_service in to_start:
        java = kafka.find_java(settings)
        kafka.check_java(java, settings.kafka_version)
        kafka.check_scram_storage(layout, credentials)
    for service in to_start:
        _check_ports_free(service, layout)
    if kafka_service in to_start:
        libs = kafka.ensure_jars(settings, progress)

    started: list[str] = []
    try:
        if redis_server is not None:
            record = redis_service.start(settings, layout, redis_server, credentials, tls)
            process.write_record(redis_svc.pid_file, record)
            records["redis"] = record
            started.append("redis")
        if java is not None and libs is not None:
            with progress(f"Formatting Kafka storage in {layout.kafka_data} ..."):
                record = await asyncio.to_thread(kafka.start, settings, layout, libs, java, credentials, tls)
            process.write_record(kafka_service.pid_file, record)
            records["kafka"] = record
            started.append("kafka")
        for name in started:
            log.info("stack.started", service=name, pid=records[name].pid)

        with progress(f"Waiting for Kafka on {kafka_service.address} and Redis on {redis_svc.address} ..."):
            await asyncio.gather(_wait_ready(kafka_service, records["kafka"]), _wait_ready(redis_svc, records["redis"]))
        with progress("Creating topics ..."):
            try:
                created = await ensure_topics(settings)
            except TopicSetupError as exc:
                raise StackError(str(exc)) from exc
            await probes.wait_group_coordinator(settings, HOST)
    except BaseException:
        # Leave the stack as we found it: stop what this call started.
        for service in (kafka_service, redis_svc):
            if service.name in started:
                await asyncio.to_thread(process.stop_pid_file, service.pid_file, timeout_s=service.stop_timeout_s)
        raise

    current = await status(settings)
    return UpResult(
        status=current,
        started=tuple(started),
        already_running=tuple(already),
        created_topics=tuple(created),
        seconds=time.monotonic() - begun,
        settings=settings,
    )


async def down(settings: Settings) -> DownResult:
    """Stop the broker, then redis-server: only processes whose pid files verify as ours."""
    layout = StackLayout.from_settings(settings)
    if not layout.run_dir.is_dir():
        return DownResult(tuple(StopResult(s.name, StopOutcome.NOT_RUNNING, None) for s in _services(settings, layout)))
    results = []
    with process.file_lock(layout.lock_file):
        for service in _services(settings, layout):  # Kafka first, then Redis
            record = process.read_record(service.pid_file)
            outcome = await asyncio.to_thread(process.stop_pid_file, service.pid_file, timeout_s=service.stop_timeout_s)
            results.append(StopResult(service.name, outcome, record.pid if record else None))
            log.info("stack.stopped", service=service.name, outcome=str(outcome), pid=record.pid if record else None)
    return DownResult(tuple(results))


def with_stack_credentials(settings: Settings) -> Settings:
    """``settings`` plus the credentials of the stack in ``settings.state_dir`` (unchanged when it has none)."""
    found = stack_credentials.load(StackLayout.from_settings(settings))
    return found.apply(settings) if found is not None and found.kafka_password else settings


async def status(settings: Settings) -> StackStatus:
    layout = StackLayout.from_settings(settings)
    settings = with_stack_credentials(settings)  # the probes log in as the stack's own clients do
    services = []
    for service in _services(settings, layout):
        record = process.read_record(service.pid_file)
        running = record is not None and process.owns(record)
        healthy = False
        if record is None:
            detail = "not started"
        elif not running:
            detail = f"not running (stale pid file: pid {record.pid} is gone or no longer ours)"
        else:
            result = await service.probe()
            healthy = result.ok
            detail = result.detail if result.ok else f"running but not answering: {result.detail}"
        if not running and probes.port_open(HOST, service.ports[0][1]):
            detail += f"; port {service.ports[0][1]} is in use by a process this stack did not start"
        services.append(
            ServiceStatus(
                name=service.name,
                address=service.address,
                running=running,
                healthy=healthy,
                pid=record.pid if running and record else None,
                detail=detail,
                log_file=str(service.log_file),
            )
        )
    topics: tuple[str, ...] = ()
    if services[0].healthy:
        topics = await _list_topics(settings)
    return StackStatus(
        state_dir=str(layout.root),
        services=tuple(services),
        topics=topics,
        kafka_version=settings.kafka_version,
        credentials_file=str(layout.credentials_file) if layout.credentials_file.is_file() else "",
    )


async def _list_topics(settings: Settings) -> tuple[str, ...]:
    admin = make_admin(settings, bootstrap=f"{HOST}:{settings.kafka_port}", client_id="streamrec-stack")
    try:
        with probes.quiet_aiokafka():
            await admin.start()
            names = await admin.list_topics()
    except Exception:  # status stays readable while the broker is flaky
        return ()
    finally:
        with probes.quiet_aiokafka(), contextlib.suppress(Exception):
            await admin.close()
    return tuple(sorted(name for name in names if not name.startswith("__")))
