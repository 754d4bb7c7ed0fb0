"""The shape of the local stack: how many Kafka brokers, one redis-server or a Redis Cluster.

``stack up --brokers N --redis-cluster`` chooses it; it is kept in ``STATE_DIR/topology.json`` so that
``status``, ``down`` and a later plain ``up`` act on the same stack. Ports, all on loopback:

- Kafka node ``i`` (0..N-1): clients on ``kafka_port + 2*i``, its KRaft controller on ``kafka_controller_port + 2*i``
  (with the defaults 9092/9093: brokers 9092, 9094, 9096 and controllers 9093, 9095, 9097). One broker keeps
  today's single-node layout (node id 1 on kafka_port/kafka_controller_port).
- Redis Cluster node ``i`` (0..5): ``redis_port + i`` (6379..6384), and Redis's cluster bus on that port + 10000
  (16379..16384). Nodes 0-2 become the masters and 3-5 their replicas (``redis-cli --cluster create`` picks).

Clients learn the topology from ``credentials.env`` (:meth:`Topology.client_env`): the full bootstrap list, the
replication factor of the topics and ``STREAMREC_REDIS_CLUSTER=true``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from foundation.settings import ENV_PREFIX, Settings
from tools.stack.errors import StackError
from tools.stack.layout import StackLayout

HOST = "127.0.0.1"
REDIS_CLUSTER_MASTERS = 3
REDIS_CLUSTER_REPLICAS = 1  # per master
REDIS_CLUSTER_NODES = REDIS_CLUSTER_MASTERS * (1 + REDIS_CLUSTER_REPLICAS)
REDIS_CLUSTER_BUS_OFFSET = 10_000  # Redis's default: the bus listens on port + 10000
MAX_BROKERS = 9
MAX_REPLICATION_FACTOR = 3


@dataclass(frozen=True)
class Topology:
    brokers: int = 1
    redis_cluster: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.brokers <= MAX_BROKERS:
            raise StackError(f"--brokers must be between 1 and {MAX_BROKERS}, got {self.brokers}")

    @property
    def replication_factor(self) -> int:
        return min(MAX_REPLICATION_FACTOR, self.brokers)

    def describe(self) -> str:
        redis = f"Redis Cluster of {REDIS_CLUSTER_NODES} nodes" if self.redis_cluster else "one redis-server"
        return f"{self.brokers} Kafka broker(s), {redis}"

    # --- Ports ---------------------------------------------------------------------------------
    def kafka_ports(self, settings: Settings) -> tuple[tuple[int, int], ...]:
        """(client port, controller port) of each Kafka node."""
        return tuple((settings.kafka_port + 2 * i, settings.kafka_controller_port + 2 * i)
                     for i in range(self.brokers))

    def redis_ports(self, settings: Settings) -> tuple[int, ...]:
        count = REDIS_CLUSTER_NODES if self.redis_cluster else 1
        return tuple(settings.redis_port + i for i in range(count))

    def check_ports(self, settings: Settings) -> None:
        """Every port distinct and valid: a controller port must not fall on another node's client port."""
        ports = [port for pair in self.kafka_ports(settings) for port in pair]
        ports += list(self.redis_ports(settings))
        if self.redis_cluster:
            ports += [port + REDIS_CLUSTER_BUS_OFFSET for port in self.redis_ports(settings)]
        if len(set(ports)) != len(ports) or max(ports) > 65535:
            raise StackError(
                f"the ports of {self.describe()} overlap or pass 65535 ({sorted(ports)}): Kafka node i listens on "
                "kafka_port + 2*i and kafka_controller_port + 2*i, Redis node i on redis_port + i (bus + 10000); "
                "choose other STREAMREC_KAFKA_BOOTSTRAP / STREAMREC_KAFKA_CONTROLLER_PORT / STREAMREC_REDIS_URL"
            )

    def bootstrap(self, settings: Settings) -> str:
        """Every broker, so that a client starts even when the first one is down."""
        if self.brokers == 1:
            return settings.kafka_bootstrap
        return ",".join(f"{HOST}:{port}" for port, _ in self.kafka_ports(settings))

    # --- What clients need -------------------------------------------------------------------------
    def client_env(self, settings: Settings) -> dict[str, str]:
        """``STREAMREC_*`` lines for credentials.env; none for the single-node stack (its clients need nothing new,
        and the file stays as it was before clusters existed)."""
        env: dict[str, str] = {}
        if self.brokers > 1:
            env |= {"KAFKA_BOOTSTRAP": self.bootstrap(settings),
                    "KAFKA_REPLICATION_FACTOR": str(self.replication_factor)}
        if self.redis_cluster:
            env["REDIS_CLUSTER"] = "true"
            # Every node as a seed: a client starting while redis_url's node is down still finds the cluster.
            env["REDIS_CLUSTER_NODES"] = ",".join(f"{HOST}:{port}" for port in self.redis_ports(settings))
        return {f"{ENV_PREFIX}{name}": value for name, value in env.items()}

    def apply(self, settings: Settings) -> Settings:
        """``settings`` as a client of this stack sees them (bootstrap list, replication factor, cluster client)."""
        update: dict[str, object] = {"kafka_replication_factor": self.replication_factor,
                                      "redis_cluster": self.redis_cluster}
        if self.redis_cluster:
            update["redis_cluster_nodes"] = ",".join(f"{HOST}:{port}" for port in self.redis_ports(settings))
        if self.brokers > 1:  # one broker: the caller's bootstrap string stays as it was
            update["kafka_bootstrap"] = self.bootstrap(settings)
        return settings.model_copy(update=update)

    # --- The state dir -------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def load(layout: StackLayout) -> Topology | None:
    """The topology the stack in ``layout`` was last brought up with (None before the first ``up``)."""
    try:
        raw = json.loads(layout.topology_file.read_text())
        return Topology(brokers=int(raw["brokers"]), redis_cluster=bool(raw["redis_cluster"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{layout.topology_file} is unreadable ({exc}): remove it and run `stack up` again") from exc


def save(layout: StackLayout, topology: Topology) -> None:
    layout.topology_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = layout.topology_file.with_name(f".{layout.topology_file.name}.tmp")
    temporary.write_text(topology.to_json())
    temporary.replace(layout.topology_file)


def resolve(layout: StackLayout, brokers: int | None, redis_cluster: bool | None) -> Topology:
    """The options given, else what the state dir remembers, else the single-node defaults."""
    stored = load(layout) or Topology()
    return Topology(
        brokers=stored.brokers if brokers is None else brokers,
        redis_cluster=stored.redis_cluster if redis_cluster is None else redis_cluster,
    )
