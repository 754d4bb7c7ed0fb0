"""Apache Kafka in KRaft mode, run from jars: one node, or a cluster of N nodes (``stack up --brokers N``), each a
combined broker + controller, the N together the controller quorum (static ``controller.quorum.voters``), all
formatted with one cluster id and the stack's SCRAM user.

No Kafka distribution is installed: ``org.apache.kafka:kafka_2.13`` and its runtime dependencies are
resolved from Maven Central with ``tools/stack/pom.xml`` into ``settings.cache_dir /
"kafka-{version}"`` once (shared by every checkout, reused offline afterwards), and the broker runs
on the machine's Java with ``java -cp 'libs/*' kafka.Kafka server.properties``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from foundation.logs import get_logger
from foundation.settings import MASK, Settings
from tools.stack.credentials import SCRAM_MECHANISM, StackCredentials, write_private
from tools.stack.errors import StackError
from tools.stack.layout import KafkaNodeFiles, StackLayout
from tools.stack.process import ProcessRecord, spawn_detached, tail
from tools.stack.tls import TlsFiles

log = get_logger(__name__)

POM = Path(__file__).with_name("pom.xml")
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"  # what `kafka-storage.sh` runs
LISTEN_HOST = "127.0.0.1"
NODE_ID = 1
COMPLETE_MARKER = "COMPLETE"

# A modest heap: the machine is shared with redis, the workers and the server.
BROKER_JVM_OPTIONS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)
# The storage tool runs for a second or two: favour JVM start-up time.
TOOL_JVM_OPTIONS: tuple[str, ...] = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData")

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(?:[-.][0-9A-Za-z]+)*$")

Progress = Callable[[str], AbstractContextManager[object]]

# A cluster notices a dead broker sooner than Kafka's defaults (2 s heartbeats, fenced after 9 s): failover tests
# and development want seconds. Still several heartbeats per timeout, so a GC pause fences no one.
CLUSTER_HEARTBEAT_MS = 500
CLUSTER_SESSION_TIMEOUT_MS = 4000


@dataclass(frozen=True)
class KafkaNode:
    """One node of the stack's Kafka: its KRaft node id, ports and files."""

    node_id: int
    port: int
    controller_port: int
    files: KafkaNodeFiles


def nodes(settings: Settings, layout: StackLayout, brokers: int = 1) -> tuple[KafkaNode, ...]:
    """The stack's Kafka nodes: one broker keeps the single-node files and ports (node id 1); a cluster's node i
    has id i + 1, ports ``kafka_port + 2*i`` / ``kafka_controller_port + 2*i`` and the folder ``kafka-<i>``."""
    if brokers == 1:
        return (KafkaNode(NODE_ID, settings.kafka_port, settings.kafka_controller_port, layout.kafka_node()),)
    return tuple(
        KafkaNode(i + 1, settings.kafka_port + 2 * i, settings.kafka_controller_port + 2 * i, layout.kafka_node(i))
        for i in range(brokers)
    )


def _quorum(settings: Settings, layout: StackLayout, quorum: Sequence[KafkaNode] | None) -> Sequence[KafkaNode]:
    return quorum if quorum else nodes(settings, layout)


def _no_progress(_message: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


# --- Jars --------------------------------------------------------------------------------------


def jar_cache_dir(settings: Settings) -> Path:
    return settings.cache_dir.expanduser() / f"kafka-{settings.kafka_version}"


def libs_dir(cache_dir: Path) -> Path:
    return cache_dir / "libs"


def jars_complete(cache_dir: Path, version: str) -> bool:
    """True when a download into ``cache_dir`` finished (its marker is written last)."""
    return (cache_dir / COMPLETE_MARKER).is_file() and (libs_dir(cache_dir) / f"kafka_2.13-{version}.jar").is_file()


def _check_version(version: str) -> None:
    if not _VERSION_RE.match(version):
        raise StackError(f"kafka_version {version!r} does not look like a Kafka release such as 4.1.1")


def ensure_jars(settings: Settings, progress: Progress = _no_progress) -> Path:
    """The folder of broker jars for ``settings.kafka_version``, resolved from Maven Central if needed.

    The download goes to a private temporary folder that is renamed into place only after Maven
    succeeded and the marker file is written, so an interrupted download is simply redone.
    """
    version = settings.kafka_version
    _check_version(version)
    cache = jar_cache_dir(settings)
    if jars_complete(cache, version):
        return libs_dir(cache)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            f"Kafka {version} jars are not cached in {cache} and `mvn` is not on PATH to fetch them; "
            "install Maven (apt-get install -y maven) or copy a complete cache folder there"
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    work = cache.parent / f".{cache.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        # Maven runs on a copy of the POM so that it writes nothing next to the source tree.
        shutil.copyfile(POM, work / "pom.xml")
        command = [
            mvn, "-q", "-B", "-Dstyle.color=never",
            "-f", str(work / "pom.xml"),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs_dir(work)}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        started = time.monotonic()
        with progress(f"Downloading Kafka {version} jars from Maven Central into {cache} ..."):
            result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if result.returncode != 0:
            raise StackError(f"Maven could not resolve org.apache.kafka:kafka_2.13:{version}:\n{_maven_errors(result)}")
        jars = sorted(libs_dir(work).glob("*.jar"))
        if not (libs_dir(work) / f"kafka_2.13-{version}.jar").is_file():
            raise StackError(f"Maven finished but kafka_2.13-{version}.jar is missing from {libs_dir(work)}")
        size = sum(jar.stat().st_size for jar in jars)
        (work / COMPLETE_MARKER).write_text(f"kafka {version}: {len(jars)} jars, {size} bytes\n")
        if jars_complete(cache, version):  # another `stack up` finished the same download meanwhile
            return libs_dir(cache)
        shutil.rmtree(cache, ignore_errors=True)  # a half download from an older run
        try:
            work.rename(cache)
        except OSError:
            if not jars_complete(cache, version):  # not another process winning the race
                raise
        log.info(
            "stack.kafka.jars_downloaded",
            version=version,
            jars=len(jars),
            mbytes=round(size / 1e6, 1),
            seconds=round(time.monotonic() - started, 1),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return libs_dir(cache)


_MAVEN_BOILERPLATE = ("-e switch", "-X switch", "] [Help 1] http", "For more information", "following articles")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _maven_errors(result: subprocess.CompletedProcess[str]) -> str:
    """Maven's error lines without its generic advice."""
    lines = [_ANSI.sub("", line).rstrip() for line in (result.stdout + result.stderr).splitlines()]
    useful = [
        line for line in lines if line.strip() not in {"", "[ERROR]"} and not any(b in line for b in _MAVEN_BOILERPLATE)
    ]
    return "\n".join(useful[-30:]) or f"mvn exited with status {result.returncode}"


# --- Java --------------------------------------------------------------------------------------


def required_java(version: str) -> int:
    """Kafka 4.x brokers need Java 17; 3.x brokers run on 11."""
    return 17 if int(version.split(".")[0]) >= 4 else 11


def find_java(settings: Settings) -> str:
    """``bin/java`` of the ``java_home`` setting (or ``JAVA_HOME``) when set, else ``java`` from PATH."""
    home = settings.java_home
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError("`java` is not on PATH (and JAVA_HOME is unset): install a JDK 17, e.g. openjdk-17-jre")
    return java


def parse_java_major(version_output: str) -> int | None:
    """The major version from ``java -version`` output ("1.8.0_392" -> 8, "17.0.15" -> 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java(java: str, kafka_version: str) -> None:
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    major = parse_java_major(result.stderr + result.stdout)
    needed = required_java(kafka_version)
    if major is None or major < needed:
        raise StackError(
            f"Kafka {kafka_version} needs Java {needed} or newer; {java} reports "
            f"{(result.stderr or result.stdout).strip().splitlines()[:1]}"
        )


# --- Configuration -----------------------------------------------------------------------------


def _escape(value: str) -> str:
    """A value for a java.util.Properties file."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _security_properties(credentials: StackCredentials, tls: TlsFiles | None) -> dict[str, str]:
    """SASL/SCRAM on the client listener (inter-broker traffic too); with ``tls`` the listener is SASL_SSL with
    a PEM keystore. The SCRAM user itself is bootstrapped into the metadata by ``format_storage``."""
    name = "sasl_ssl" if tls is not None else "sasl_plaintext"
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{credentials.kafka_username}" password="{credentials.kafka_password}";'
    )
    props = {
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        f"listener.name.{name}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
    }
    if tls is not None:
        props |= {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls.server_pem),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls.ca_cert),
            "ssl.client.auth": "none",
        }
    return props


def server_properties(
    settings: Settings,
    layout: StackLayout,
    credentials: StackCredentials | None = None,
    tls: TlsFiles | None = None,
    *,
    quorum: Sequence[KafkaNode] | None = None,
    index: int = 0,
) -> dict[str, str]:
    """The config of node ``index`` of ``quorum`` (default: the single node). Without ``credentials`` the client
    listener is PLAINTEXT (``stack_auth`` off); the controller listener always stays PLAINTEXT on loopback (only
    the stack's own nodes talk to it)."""
    members = _quorum(settings, layout, quorum)
    node = members[index]
    port, controller_port = node.port, node.controller_port
    listener = "PLAINTEXT" if credentials is None else ("SASL_SSL" if tls is not None else "SASL_PLAINTEXT")
    security = {} if credentials is None else _security_properties(credentials, tls)
    voters = ",".join(f"{member.node_id}@{LISTEN_HOST}:{member.controller_port}" for member in members)
    return {
        # KRaft, every node both broker and controller, with a static quorum of all of them.
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "controller.listener.names": "CONTROLLER",
        "listeners": f"{listener}://{LISTEN_HOST}:{port},CONTROLLER://{LISTEN_HOST}:{controller_port}",
        "advertised.listeners": f"{listener}://{LISTEN_HOST}:{port}",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
        **security,
        "log.dirs": str(node.files.data),
        **_replication_properties(len(members)),
        # Development conveniences: no rebalance delay, topics only through `ensure_topics`.
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        # A small machine.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "168",
    }


def _replication_properties(brokers: int) -> dict[str, str]:
    """Replication of the internal topics and the defaults of new ones: one broker, every factor and ISR minimum 1;
    N brokers, factor min(3, N) and (with 3 or more) 2 replicas in sync per acknowledged write."""
    rf = min(3, brokers)
    min_isr = 2 if rf >= 3 else 1
    props = {
        "num.partitions": "1",
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(min_isr),
    }
    if brokers > 1:
        props |= {
            "broker.heartbeat.interval.ms": str(CLUSTER_HEARTBEAT_MS),
            "broker.session.timeout.ms": str(CLUSTER_SESSION_TIMEOUT_MS),
        }
    return props


def render_server_properties(
    settings: Settings,
    layout: StackLayout,
    credentials: StackCredentials | None = None,
    tls: TlsFiles | None = None,
    *,
    quorum: Sequence[KafkaNode] | None = None,
    index: int = 0,
) -> str:
    lines = ["# Generated by `streamrec stack up` on every start: change settings, not this file."]
    props = server_properties(settings, layout, credentials, tls, quorum=quorum, index=index)
    lines += [f"{key}={_escape(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j2_properties(layout: StackLayout, files: KafkaNodeFiles | None = None) -> str:
    log_file = _escape(str((files or layout.kafka_node()).server_log))
    return f"""\
# Generated by `streamrec stack up`: the broker's log goes to one rolled file under the state dir.
status = warn
# Kafka logs its own shutdown from a JVM shutdown hook: keep log4j2 running until the JVM exits.
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state-change.name = state.change.logger
logger.state-change.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def write_configs(
    settings: Settings,
    layout: StackLayout,
    credentials: StackCredentials | None = None,
    tls: TlsFiles | None = None,
    *,
    quorum: Sequence[KafkaNode] | None = None,
    index: int = 0,
) -> None:
    files = _quorum(settings, layout, quorum)[index].files
    layout.make_node_dirs(kafka=files)
    # Mode 0600: the JAAS line holds the SCRAM password.
    write_private(files.config, render_server_properties(settings, layout, credentials, tls, quorum=quorum,
                                                         index=index))
    files.log4j_config.write_text(render_log4j2_properties(layout, files))


# --- Storage and start -------------------------------------------------------------------------


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 characters).

    One id in 64 would start with ``-``, which ``kafka-storage format`` parses as an option
    ("--cluster-id: expected one argument"; a CI run failed on it). Kafka's own
    ``Uuid.randomUuid`` redraws such ids, and so do we.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def is_formatted(layout: StackLayout, files: KafkaNodeFiles | None = None) -> bool:
    return ((files or layout.kafka_node()).data / "meta.properties").is_file()


def formatted_cluster_id(files: KafkaNodeFiles) -> str | None:
    """The cluster id a node's storage was formatted with (``cluster.id`` in meta.properties), if formatted."""
    try:
        text = (files.data / "meta.properties").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "cluster.id":
            return value.strip()
    return None


def _classpath(libs: Path) -> str:
    return f"{libs}/*"


def check_scram_storage(
    layout: StackLayout, credentials: StackCredentials | None, files: KafkaNodeFiles | None = None
) -> None:
    """A formatted storage must hold the SCRAM user of ``credentials`` (it is only added at format time): a
    storage from before ``stack_auth``, or from lost credentials, would leave the broker unable to log in."""
    files = files or layout.kafka_node()
    if credentials is None or not is_formatted(layout, files):
        return
    marker = files.scram_marker
    if marker.is_file() and marker.read_text().strip() == credentials.fingerprint():
        return
    raise StackError(
        f"the Kafka storage in {files.data} was formatted without this stack's SCRAM user "
        f"({layout.credentials_file}). Remove {files.dir} (its topics are lost) and run "
        "`streamrec stack up` again, or keep a plaintext stack with STREAMREC_STACK_AUTH=false."
    )


def format_storage(
    layout: StackLayout,
    libs: Path,
    java: str,
    credentials: StackCredentials | None = None,
    *,
    files: KafkaNodeFiles | None = None,
    cluster_id: str | None = None,
) -> str | None:
    """Format ``log.dirs`` for KRaft once (a formatted folder is kept); returns the new cluster id.

    The nodes of a cluster are all formatted with one ``cluster_id`` (default: a new one). With ``credentials``
    the SCRAM user is written into the first metadata (``--add-scram``, KRaft 3.5+): the broker needs it for its
    own inter-broker login before any admin API could create it."""
    files = files or layout.kafka_node()
    if is_formatted(layout, files):
        check_scram_storage(layout, credentials, files)
        return None
    cluster_id = cluster_id or new_cluster_id()
    scram: list[str] = []
    if credentials is not None:
        scram = ["--add-scram",
                 f"{SCRAM_MECHANISM}=[name={credentials.kafka_username},password={credentials.kafka_password}]"]
    command = [
        java, *TOOL_JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={files.log4j_config}",
        "-cp", _classpath(libs),
        STORAGE_TOOL_CLASS, "format",
        "--config", str(files.config),
        "--cluster-id", cluster_id,
        "--ignore-formatted",
        *scram,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        if credentials is not None:
            output = output.replace(credentials.kafka_password, MASK)
        raise StackError(f"formatting Kafka storage in {files.data} failed:\n{output}")
    if credentials is not None:
        files.scram_marker.write_text(credentials.fingerprint() + "\n")
    log.debug("stack.kafka.formatted", cluster_id=cluster_id, output=result.stdout.strip())
    return cluster_id


def broker_command(java: str, libs: Path, layout: StackLayout, files: KafkaNodeFiles | None = None) -> list[str]:
    files = files or layout.kafka_node()
    return [
        java, *BROKER_JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={files.log4j_config}",
        f"-Dkafka.logs.dir={layout.logs_dir}",
        "-cp", _classpath(libs),
        MAIN_CLASS, str(files.config),
    ]  # fmt: skip


def start(
    settings: Settings,
    layout: StackLayout,
    libs: Path,
    java: str,
    credentials: StackCredentials | None = None,
    tls: TlsFiles | None = None,
    *,
    quorum: Sequence[KafkaNode] | None = None,
    index: int = 0,
    cluster_id: str | None = None,
) -> ProcessRecord:
    """Write the configs, format storage if new (a cluster's nodes with one ``cluster_id``), start node ``index``
    of ``quorum`` (default: the single broker) detached; returns its pid record.

    The caller writes the pid file and waits until the broker answers.
    """
    node = _quorum(settings, layout, quorum)[index]
    files = node.files
    write_configs(settings, layout, credentials, tls, quorum=quorum, index=index)
    format_storage(layout, libs, java, credentials, files=files, cluster_id=cluster_id)
    files.stdout.write_text("")  # only this run's JVM output (the server log keeps history)
    return spawn_detached(
        broker_command(java, libs, layout, files),
        name=files.name,
        # The absolute config path is in the JVM's command line and unique to this state dir (and node).
        marker=str(files.config),
        port=node.port,
        log_file=files.stdout,
        cwd=files.dir,
    )


def log_excerpt(layout: StackLayout, lines: int = 30, files: KafkaNodeFiles | None = None) -> str:
    """The end of the broker's logs, for error messages."""
    files = files or layout.kafka_node()
    parts = []
    for path in (files.stdout, files.server_log):
        text = tail(path, lines)
        if text.strip():
            parts.append(f"--- last lines of {path} ---\n{text}")
    return "\n".join(parts) or f"(no output in {layout.logs_dir})"
