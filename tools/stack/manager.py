"""``up`` / ``down`` / ``status`` of the local stack (Kafka broker + redis-server), with typed results.

- :func:`up` starts what is not running (idempotent), waits until both answer, creates the topics.
  If anything fails it stops the processes it started itself, so a failed ``up`` leaves the stack as
  it found it.
- :func:`down` stops exactly the processes recorded in the pid files, after checking that each pid
  still is the process that was started (see :mod:`tools.stack.process`).
- :func:`status` reports, per service, whether our process runs and answers.

The same three work on a cluster stack (``up(brokers=3, redis_cluster=True)``, see :mod:`tools.stack.topology`):
one service per process (``kafka-0``.., ``redis-0``..), each with its pid file, ports and probe; ``up`` also joins
fresh Redis nodes into a cluster (``redis-cli --cluster create``) and waits for ``cluster_state:ok``.
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
from foundation.redis_io import redis_client
from foundation.settings import Settings
from foundation.topics import TopicSetupError, ensure_topics
from tools.stack import credentials as stack_credentials
from tools.stack import kafka, probes, process
from tools.stack import redis as redis_service
from tools.stack import tls as stack_tls
from tools.stack import topology as stack_topology
from tools.stack.credentials import StackCredentials
from tools.stack.errors import StackError
from tools.stack.kafka import Progress
from tools.stack.layout import StackLayout
from tools.stack.process import ProcessRecord, StopOutcome
from tools.stack.topology import REDIS_CLUSTER_BUS_OFFSET, REDIS_CLUSTER_REPLICAS, Topology

log = get_logger(__name__)

HOST = "127.0.0.1"
KAFKA_START_TIMEOUT_S = 180.0
REDIS_START_TIMEOUT_S = 30.0
KAFKA_STOP_TIMEOUT_S = 60.0
REDIS_STOP_TIMEOUT_S = 30.0
REDIS_CLUSTER_OK_TIMEOUT_S = 60.0
CLUSTER_TOPIC_ATTEMPTS = 30  # a cluster's brokers may refuse for a moment after they registered ("fenced")


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
    topology: Topology = field(default_factory=Topology)

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
            "topology": asdict(self.topology),
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
    probe: Callable[[], Awaitable[probes.Probe]]  # "answers": what `up` waits for
    excerpt: Callable[[], str]
    start_timeout_s: float
    stop_timeout_s: float
    kind: str = "kafka"  # "kafka" or "redis"
    index: int = 0  # the node's position among the stack's nodes of its kind
    # What `status` calls healthy, when more than `probe` (a Redis Cluster node must also see cluster_state:ok).
    health: Callable[[], Awaitable[probes.Probe]] | None = None


def _kafka_nodes(settings: Settings, layout: StackLayout, topology: Topology) -> tuple[kafka.KafkaNode, ...]:
    return kafka.nodes(settings, layout, topology.brokers)


def _redis_nodes(settings: Settings, layout: StackLayout, topology: Topology) -> tuple[redis_service.RedisNode, ...]:
    return redis_service.nodes(settings, layout, topology.redis_ports(settings) if topology.redis_cluster else None)


def _services(settings: Settings, layout: StackLayout, topology: Topology | None = None) -> tuple[_Service, ...]:
    """One service per process, Kafka first: the single broker and redis-server, or every node of a cluster."""
    topology = topology or Topology()
    services = []
    for i, node in enumerate(_kafka_nodes(settings, layout, topology)):
        services.append(_Service(
            name=node.files.name,
            pid_file=node.files.pid_file,
            ports=(("Kafka", node.port), ("Kafka controller", node.controller_port)),
            address=f"{HOST}:{node.port}",
            log_file=node.files.server_log,
            probe=lambda port=node.port: probes.kafka_answers(settings, HOST, port=port, brokers=topology.brokers),
            excerpt=lambda files=node.files: kafka.log_excerpt(layout, files=files),
            start_timeout_s=KAFKA_START_TIMEOUT_S,
            stop_timeout_s=KAFKA_STOP_TIMEOUT_S,
            kind="kafka",
            index=i,
            # Healthy in `status`: this broker answers, whether or not every other one does.
            health=(lambda port=node.port: probes.kafka_answers(settings, HOST, port=port))
            if topology.brokers > 1 else None,
        ))
    for i, rnode in enumerate(_redis_nodes(settings, layout, topology)):
        ports: tuple[tuple[str, int], ...] = (("Redis", rnode.port),)
        if rnode.cluster:
            ports += (("Redis cluster bus", rnode.port + REDIS_CLUSTER_BUS_OFFSET),)
        services.append(_Service(
            name=rnode.files.name,
            pid_file=rnode.files.pid_file,
            ports=ports,
            address=f"{HOST}:{rnode.port}",
            log_file=rnode.files.log,
            probe=lambda port=rnode.port: probes.redis_answers(settings, HOST, port=port),
            excerpt=lambda files=rnode.files: redis_service.log_excerpt(layout, files=files),
            start_timeout_s=REDIS_START_TIMEOUT_S,
            stop_timeout_s=REDIS_STOP_TIMEOUT_S,
            kind="redis",
            index=i,
            health=(lambda port=rnode.port: probes.redis_answers(settings, HOST, port=port, cluster=True))
            if rnode.cluster else None,
        ))
    return tuple(services)


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


async def up(
    settings: Settings,
    *,
    progress: Progress = _no_progress,
    brokers: int | None = None,
    redis_cluster: bool | None = None,
) -> UpResult:
    """Start the brokers and redis-servers unless they run, wait until they answer, create the topics.

    ``brokers`` and ``redis_cluster`` choose the topology (None: what the state dir remembers, else one broker
    and one redis-server); it is remembered for ``status``, ``down`` and the next ``up``."""
    layout = StackLayout.from_settings(settings)
    layout.make_dirs()
    with process.file_lock(layout.lock_file):  # a concurrent `up`/`down` of this stack waits
        return await _up(settings, layout, progress, stack_topology.resolve(layout, brokers, redis_cluster))


def _security(
    settings: Settings, layout: StackLayout, starting_all: bool, topology_env: dict[str, str] | None = None
) -> tuple[StackCredentials | None, stack_tls.TlsFiles | None]:
    """The stack's credentials (made once, kept in credentials.env, with ``topology_env``: the lines a cluster's
    clients need) and TLS files, per ``stack_auth``/``stack_tls``."""
    if not settings.stack_auth:
        if settings.stack_tls:
            raise StackError("stack_tls needs stack_auth (TLS without a login is not offered)")
        if starting_all:  # clients of this state dir must not log in to a plaintext stack
            stack_credentials.remove(layout)
            stack_credentials.write_topology_only(layout, topology_env or {})
        log.warning("stack.auth.off", detail="Redis without a password, Kafka in PLAINTEXT (stack_auth=false)")
        return None, None
    if not starting_all and stack_credentials.load(layout) is None:
        # Services from before credentials existed run plaintext: clients must not be told to log in to them.
        log.warning("stack.auth.restart_needed", state_dir=str(layout.root),
                    detail="running without credentials; `streamrec stack down` then `up` protects it")
        return None, None
    tls = stack_tls.ensure(layout) if settings.stack_tls else None
    return stack_credentials.ensure(settings, layout, str(tls.ca_cert) if tls else "", topology_env), tls


def _check_topology_change(settings: Settings, layout: StackLayout, wanted: Topology) -> None:
    """Another topology than the last ``up``'s: only when none of its processes runs, and never onto Kafka storage
    formatted for another number of brokers (its quorum is fixed at format time)."""
    stored = stack_topology.load(layout)
    if stored is None or stored == wanted:
        return
    running = [s.name for s in _services(settings, layout, stored) if _running_record(s) is not None]
    if running:
        raise StackError(
            f"the stack in {layout.root} runs as {stored.describe()} ({', '.join(running)}): run "
            f"`streamrec stack down` before `streamrec stack up` with {wanted.describe()}"
        )
    if wanted.brokers > 1 and stored.brokers != wanted.brokers:
        formatted = [layout.kafka_node(i).dir for i in range(max(stored.brokers, wanted.brokers))
                     if kafka.is_formatted(layout, layout.kafka_node(i))]
        if formatted:
            raise StackError(
                f"the Kafka storage in {', '.join(map(str, formatted))} belongs to a cluster of {stored.brokers} "
                f"broker(s); remove those folders (their topics are lost) or run with --brokers {stored.brokers}"
            )


def _cluster_id(nodes: tuple[kafka.KafkaNode, ...]) -> str | None:
    """The id every node of a Kafka cluster is formatted with: that of its formatted nodes, else a new one."""
    if len(nodes) == 1:
        return None  # the single broker draws its own at format time, as it always did
    found = {cid for node in nodes if (cid := kafka.formatted_cluster_id(node.files)) is not None}
    if len(found) > 1:
        raise StackError(
            f"the Kafka nodes' storages belong to different clusters ({', '.join(sorted(found))}); remove the "
            f"kafka-* folders of {nodes[0].files.dir.parent} (their topics are lost) and run `stack up` again"
        )
    return found.pop() if found else kafka.new_cluster_id()


async def _start_kafka_nodes(
    settings: Settings,
    layout: StackLayout,
    quorum: tuple[kafka.KafkaNode, ...],
    indexes: list[int],
    libs: Path,
    java: str,
    credentials: StackCredentials | None,
    tls: stack_tls.TlsFiles | None,
) -> list[ProcessRecord | BaseException]:
    """Format and start the given nodes at once (each format is a JVM of its own: seconds each)."""
    cluster_id = _cluster_id(quorum)
    quorum_arg = quorum if len(quorum) > 1 else None
    return await asyncio.gather(
        *(asyncio.to_thread(kafka.start, settings, layout, libs, java, credentials, tls, quorum=quorum_arg, index=i,
                            cluster_id=cluster_id) for i in indexes),
        return_exceptions=True,
    )


async def _ensure_redis_cluster(
    settings: Settings,
    nodes: tuple[redis_service.RedisNode, ...],
    credentials: StackCredentials | None,
    tls: stack_tls.TlsFiles | None,
    progress: Progress,
) -> None:
    """Create the Redis Cluster when every node is fresh; then wait until every node reports cluster_state:ok."""
    infos = [await _cluster_info(settings, node.port) for node in nodes]
    known = [int(info.get("cluster_known_nodes", "0")) for info in infos]
    if all(count == 1 for count in known) and all(info.get("cluster_slots_assigned") == "0" for info in infos):
        with progress(f"Creating the Redis Cluster ({len(nodes)} nodes) ..."):
            await asyncio.to_thread(redis_service.create_cluster, nodes, REDIS_CLUSTER_REPLICAS, credentials, tls)
    elif any(count < len(nodes) for count in known):
        lost = [node.files.name for node, count in zip(nodes, known, strict=True) if count < len(nodes)]
        raise StackError(
            f"Redis nodes {', '.join(lost)} do not know the rest of the cluster (their nodes.conf is new or lost); "
            f"run `streamrec stack down`, remove the redis-* folders of {nodes[0].files.dir.parent} (their data is "
            "lost) and run `streamrec stack up` again"
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REDIS_CLUSTER_OK_TIMEOUT_S
    with progress("Waiting for the Redis Cluster to report cluster_state:ok ..."):
        while True:
            results = [await probes.redis_answers(settings, HOST, port=node.port, cluster=True) for node in nodes]
            if all(result.ok for result in results):
                return
            if loop.time() > deadline:
                details = "; ".join(f"{n.files.name}: {r.detail}" for n, r in zip(nodes, results, strict=True))
                raise StackError(f"the Redis Cluster is not ok after {REDIS_CLUSTER_OK_TIMEOUT_S:.0f}s: {details}")
            await asyncio.sleep(0.5)


async def _cluster_info(settings: Settings, port: int) -> dict[str, str]:
    client = redis_client(settings, probes.node_url(settings, HOST, port), cluster=False)
    try:
        return await probes.cluster_info(client)
    finally:
        await client.aclose()


async def _ensure_topics(settings: Settings, attempts: int) -> list[str]:
    for attempt in range(attempts):
        try:
            return await ensure_topics(settings)
        except TopicSetupError as exc:
            if attempt == attempts - 1:
                raise StackError(str(exc)) from exc
            log.info("stack.topics.retry", reason=str(exc))
            await asyncio.sleep(1.0)
    return []


async def _up(settings: Settings, layout: StackLayout, progress: Progress, topology: Topology) -> UpResult:
    begun = time.monotonic()
    topology.check_ports(settings)
    _check_topology_change(settings, layout, topology)
    services = _services(settings, layout, topology)

    records: dict[str, ProcessRecord] = {}
    already: list[str] = []
    for service in services:
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
    to_start = [s for s in services if s.name not in records]
    credentials, tls = _security(settings, layout, starting_all=len(to_start) == len(services),
                                 topology_env=topology.client_env(settings))
    # The probes and the topic set-up below connect as this stack expects: logged in, or plaintext; and to every
    # node of a cluster (bootstrap list, replication factor).
    settings = credentials.apply(settings) if credentials is not None else stack_credentials.plaintext(settings)
    settings = topology.apply(settings)
    services = _services(settings, layout, topology)
    to_start = [s for s in services if s.name not in records]
    kafka_nodes = _kafka_nodes(settings, layout, topology)
    redis_nodes = _redis_nodes(settings, layout, topology)
    kafka_to_start = [s.index for s in to_start if s.kind == "kafka"]
    redis_to_start = [s.index for s in to_start if s.kind == "redis"]
    redis_server = java = libs = None
    if redis_to_start:
        redis_server = redis_service.find_redis_server()
        if topology.redis_cluster:
            redis_service.find_redis_cli()
    if kafka_to_start:
        java = kafka.find_java(settings)
        kafka.check_java(java, settings.kafka_version)
        for i in kafka_to_start:
            kafka.check_scram_storage(layout, credentials, kafka_nodes[i].files)
    for service in to_start:
        _check_ports_free(service, layout)
    if kafka_to_start:
        libs = kafka.ensure_jars(settings, progress)
    stack_topology.save(layout, topology)  # from here on `down` and `status` act on this topology

    started: list[str] = []
    try:
        if redis_server is not None:
            for i in redis_to_start:
                record = redis_service.start(settings, layout, redis_server, credentials, tls, node=redis_nodes[i])
                process.write_record(redis_nodes[i].files.pid_file, record)
                records[redis_nodes[i].files.name] = record
                started.append(redis_nodes[i].files.name)
        if java is not None and libs is not None:
            where = ", ".join(str(kafka_nodes[i].files.data) for i in kafka_to_start)
            with progress(f"Formatting Kafka storage in {where} ..."):
                outcomes = await _start_kafka_nodes(settings, layout, kafka_nodes, kafka_to_start, libs, java,
                                                    credentials, tls)
            for i, outcome in zip(kafka_to_start, outcomes, strict=True):
                if isinstance(outcome, ProcessRecord):
                    process.write_record(kafka_nodes[i].files.pid_file, outcome)
                    records[kafka_nodes[i].files.name] = outcome
                    started.append(kafka_nodes[i].files.name)
            failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            if failed:
                raise failed[0]
        for name in started:
            log.info("stack.started", service=name, pid=records[name].pid)

        kafka_at = ", ".join(s.address for s in services if s.kind == "kafka")
        redis_at = ", ".join(s.address for s in services if s.kind == "redis")
        with progress(f"Waiting for Kafka on {kafka_at} and Redis on {redis_at} ..."):
            await asyncio.gather(*(_wait_ready(service, records[service.name]) for service in services))
        if topology.redis_cluster:
            await _ensure_redis_cluster(settings, redis_nodes, credentials, tls, progress)
        with progress("Creating topics ..."):
            if topology.brokers == 1:
                try:
                    created = await ensure_topics(settings)
                except TopicSetupError as exc:
                    raise StackError(str(exc)) from exc
            else:
                created = await _ensure_topics(settings, CLUSTER_TOPIC_ATTEMPTS)
            await probes.wait_group_coordinator(settings, HOST)
    except BaseException:
        # Leave the stack as we found it: stop what this call started.
        for service in services:
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
    """Stop the brokers, then the redis-servers: only processes whose pid files verify as ours.

    The nodes of a kind stop together: a KRaft quorum stopped one node after the other would leave its last
    nodes without a majority, waiting for it in their controlled shutdown."""
    layout = StackLayout.from_settings(settings)
    topology = stack_topology.load(layout) or Topology()
    if not layout.run_dir.is_dir():
        return DownResult(tuple(StopResult(s.name, StopOutcome.NOT_RUNNING, None)
                                for s in _services(settings, layout, topology)))
    results: list[StopResult] = []
    with process.file_lock(layout.lock_file):
        services = list(_services(settings, layout, topology))
        services += _leftover_services(settings, layout, services)
        for kind in ("kafka", "redis"):  # Kafka first, then Redis
            group = [service for service in services if service.kind == kind]
            results += await asyncio.gather(*(_stop_service(service) for service in group))
    return DownResult(tuple(results))


async def _stop_service(service: _Service) -> StopResult:
    record = process.read_record(service.pid_file)
    outcome = await asyncio.to_thread(process.stop_pid_file, service.pid_file, timeout_s=service.stop_timeout_s)
    log.info("stack.stopped", service=service.name, outcome=str(outcome), pid=record.pid if record else None)
    return StopResult(service.name, outcome, record.pid if record else None)


def _leftover_services(settings: Settings, layout: StackLayout, known: list[_Service]) -> list[_Service]:
    """Pid files of the other topology (a single-node stack's beside a cluster's, or the reverse): stopped too, so
    that `down` leaves nothing of this state dir running whatever `up` ran before."""
    other = [*_services(settings, layout, Topology()),
             *_services(settings, layout, Topology(brokers=stack_topology.MAX_BROKERS, redis_cluster=True))]
    names = {service.name for service in known}
    return [service for service in other if service.name not in names and service.pid_file.is_file()]


def with_stack_credentials(settings: Settings) -> Settings:
    """``settings`` plus the credentials of the stack in ``settings.state_dir`` (unchanged when it has none)."""
    found = stack_credentials.load(StackLayout.from_settings(settings))
    return found.apply(settings) if found is not None and found.kafka_password else settings


async def status(settings: Settings) -> StackStatus:
    layout = StackLayout.from_settings(settings)
    topology = stack_topology.load(layout) or Topology()
    # The probes log in as the stack's own clients do.
    settings = topology.apply(with_stack_credentials(settings))
    services = []
    for service in _services(settings, layout, topology):
        record = process.read_record(service.pid_file)
        running = record is not None and process.owns(record)
        healthy = False
        if record is None:
            detail = "not started"
        elif not running:
            detail = f"not running (stale pid file: pid {record.pid} is gone or no longer ours)"
        else:
            result = await (service.health or service.probe)()
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
    answering = [s for s in services if s.healthy and s.name.startswith("kafka")]
    if answering:
        topics = await _list_topics(settings, answering[0].address)
    return StackStatus(
        state_dir=str(layout.root),
        services=tuple(services),
        topics=topics,
        kafka_version=settings.kafka_version,
        credentials_file=str(layout.credentials_file) if layout.credentials_file.is_file() else "",
        topology=topology,
    )


async def _list_topics(settings: Settings, address: str) -> tuple[str, ...]:
    admin = make_admin(settings, bootstrap=address, client_id="streamrec-stack")
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
