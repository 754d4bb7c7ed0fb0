"""Every Redis key of the system, built from one prefix by one object (:class:`KeyLayout`).

Workers, servers, tools and tests take their keys from here, so the layout is written down once. The five keys
a user owns carry the hash tag ``{u:<user>}``: on Redis Cluster they are one slot, so one user's state is one atomic
unit for the worker's per-slot writes (``docs/cluster-exactly-once.md``) and the server's per-request user read is
one slot, one round trip. Every other key is self-contained (its slot is its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Final

from online_state.slots import slot_tag

DEFAULT_PREFIX: Final = "sr"
_GLOB: Final = frozenset("*?[]")


@cache
def _user_families(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}:{family}:{{u:" for family in ("u", "uv", "s", "ew", "x"))


def user_tag(user_id: str) -> str:
    """The hash tag of a user's keys. ``u:`` keeps the tag non-empty whatever the id (an empty ``{}`` tag would
    not count), and the tag ends at the first ``}``, so an id containing one still gives its five keys one slot."""
    return f"{{u:{user_id}}}"


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The key of every piece of online state under ``prefix`` (``sr`` unless settings say otherwise).

    ======================================= ====== ==========================================================
    key                                     type   what (module with the value's codec)
    ======================================= ====== ==========================================================
    ``sr:u:{u:<user>}``                     STRING a user's feature state (:mod:`online_state.feature_codec`)
    ``sr:i:{item}``                         HASH   an item's feature state (:mod:`online_state.feature_codec`)
    ``sr:uv:{u:<user>}``                    STRING a user's online vector (:mod:`online_state.user_vectors`)
    ``sr:s:{u:<user>}``                     STRING a user's session (:mod:`online_state.sessions`)
    ``sr:ew:{u:<user>}``                    STRING a user's last applied event ids (:mod:`streams.dedupe`)
    ``sr:x:{u:<user>}``                     STRING a user's experiments blob (:mod:`online_state.experiments`)
    ``sr:xc:{name}``                        HASH   an experiment's per-variant counters (same module)
    ``sr:xu:{name}:{variant}``              SET    the users exposed to a variant (same module)
    ``sr:xt:{name}:{variant}``              STRING HyperLogLog of the titles a variant showed
    ``sr:trend:{window}:{scope}:g{gen}``    ZSET   trending counts (:mod:`online_state.trending`)
    ``sr:new_releases``                     ZSET   item id -> release ts (:mod:`online_state.trending`)
    ``sr:il:{space:08x}:{item}``            HASH   a title's online learning sums (:mod:`online_state.item_learning`)
    ``sr:offset:{topic}:{partition}``       STRING the last applied offset (:mod:`online_state.offsets`)
    ``sr:applied:{<slot tag>}``             HASH   per-slot applied offsets (:mod:`online_state.slot_markers`)
    ``sr-auth:api-keys``                    HASH   key name -> sha256 and scopes (:mod:`online_state.api_keys`)
    ======================================= ====== ==========================================================

    Passing ``"*"`` as an id gives the SCAN pattern of a family (``user_state("*") == "sr:u:{u:*}"``).
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        # The prefix is also the root of the ``{prefix}:*`` pattern that --rebuild deletes: it must match
        # exactly the keys it names.
        if not self.prefix or _GLOB & set(self.prefix):
            raise ValueError(f"Redis key prefix {self.prefix!r} must be non-empty and free of glob characters")

    def user_state(self, user_id: str) -> str:
        return f"{self.prefix}:u:{user_tag(user_id)}"

    def is_user_key(self, key: str) -> bool:
        """Whether ``key`` is one of the five keys a user owns (the per-slot protocol's user stage)."""
        return key.startswith(_user_families(self.prefix))

    def item_state(self, item_id: str) -> str:
        return f"{self.prefix}:i:{item_id}"

    def user_vector(self, user_id: str) -> str:
        return f"{self.prefix}:uv:{user_tag(user_id)}"

    def session(self, user_id: str) -> str:
        return f"{self.prefix}:s:{user_tag(user_id)}"

    def event_window(self, user_id: str) -> str:
        """Digests of the user's last applied event ids (de-duplication of retried events)."""
        return f"{self.prefix}:ew:{user_tag(user_id)}"

    def experiment_user(self, user_id: str) -> str:
        """The user's experiment state: exposures, attribution window, per-experiment counts (one blob)."""
        return f"{self.prefix}:x:{user_tag(user_id)}"

    def experiment_counts(self, name: str) -> str:
        """Experiment ``name``'s shared counters, fields ``{variant}:{counter}`` (commutative increments only).
        Experiment and variant names have no ``:`` (``models.experiments.config.Name``)."""
        return f"{self.prefix}:xc:{name}"

    def experiment_users(self, name: str, variant: str) -> str:
        return f"{self.prefix}:xu:{name}:{variant}"

    def experiment_titles(self, name: str, variant: str) -> str:
        return f"{self.prefix}:xt:{name}:{variant}"

    def trending(self, window: str, scope: str, generation: int | str) -> str:
        """One generation of one window and scope (``scope``: ``all``, ``country:US``, ...)."""
        return f"{self.prefix}:trend:{window}:{scope}:g{generation}"

    @property
    def new_releases(self) -> str:
        return f"{self.prefix}:new_releases"

    def item_learning_space(self, space: int) -> str:
        """What every item-learning key of CF space ``space`` starts with (the item id follows)."""
        return f"{self.prefix}:il:{space & 0xFFFFFFFF:08x}:"

    def item_learning(self, space: int, item_id: str) -> str:
        """A title's learning hash in CF space ``space`` (the crc32 id of the bundle's item vectors, see
        :func:`models.item_vector_codec.space_id`): sums of user vectors only add up within one space."""
        return self.item_learning_space(space) + item_id

    def offset(self, topic: str, partition: int | str) -> str:
        """The last offset of a partition whose effects committed (written in the same MULTI)."""
        return f"{self.prefix}:offset:{topic}:{partition}"

    @property
    def applied_family(self) -> str:
        """What every slot marker's key starts with (the per-slot protocol's bookkeeping)."""
        return f"{self.prefix}:applied:"

    def applied(self, slot: int) -> str:
        """The applied offsets of hash slot ``slot`` (``stage|topic|partition`` -> last offset applied to the
        slot's keys), in that slot through its tag: :mod:`online_state.slot_markers`."""
        return f"{self.applied_family}{{{slot_tag(slot)}}}"

    @property
    def api_keys(self) -> str:
        """The API-key table (a HASH, :mod:`online_state.api_keys`). Deliberately *not* under ``{prefix}:*``:
        ``--rebuild`` deletes what Kafka can rebuild, and keys are not in Kafka."""
        return f"{self.prefix}-auth:api-keys"

    @property
    def everything(self) -> str:
        """The SCAN pattern of every key under the prefix (state and offsets: what ``--rebuild`` deletes)."""
        return f"{self.prefix}:*"


DEFAULT_KEYS: Final = KeyLayout()  # the layout of the default prefix (what settings give unless told otherwise)
