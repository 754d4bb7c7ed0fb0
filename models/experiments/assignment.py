"""Who is in which experiment and variant: deterministic, sticky, layered, with a holdout.

A user's bucket in a layer is a hash of (salt, user id) into :data:`~models.experiments.config.BUCKETS`, so the
same user gets the same variant on every replica and every request, and no state is kept anywhere. Layers are
orthogonal (each hashes with its own salt): experiments in different layers split the users independently and can
run side by side; experiments in one layer take consecutive ranges of its buckets, in file order, so a user is in
at most one of them. The variant is a second hash with the experiment's salt, split by the variants' weights.
BLAKE2b rather than Python's ``hash``: the latter is salted per process (PYTHONHASHSEED), which would make
assignment differ between replicas.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from models.experiments.config import BUCKETS, HOLDOUT_EXPERIMENT, Changes, Experiment, ExperimentsConfig


def bucket(salt: str, user_id: str) -> int:
    """The user's bucket in ``[0, BUCKETS)`` for ``salt``."""
    digest = hashlib.blake2b(f"{salt}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    variant: str
    kind: str = "ab"
    changes: Changes = field(default_factory=Changes)
    # Interleaving: the two variants (name, changes) whose rankings are drafted into one list.
    teams: tuple[tuple[str, Changes], ...] = ()


def _active(exp: Experiment, now_ms: int) -> bool:
    start, stop = exp.start, exp.stop
    return (start is None or now_ms >= int(start)) and (stop is None or now_ms < int(stop))


def _variant(exp: Experiment, user_id: str) -> int:
    weights = [v.weight for v in exp.variants]
    point = bucket(exp.hash_salt, user_id) / BUCKETS * sum(weights)
    edge = 0.0
    for i, w in enumerate(weights):
        edge += w
        if point < edge:
            return i
    return len(weights) - 1


def assign(config: ExperimentsConfig, user_id: str, now_ms: int) -> list[Assignment]:
    """Every experiment ``user_id`` is in at ``now_ms`` (at most one per layer), holdout first when configured."""
    holdout = config.holdout
    out: list[Assignment] = []
    if holdout.share > 0:
        held = bucket(f"holdout\x1f{holdout.salt}", user_id) < holdout.share * BUCKETS
        out.append(Assignment(HOLDOUT_EXPERIMENT, "holdout" if held else "exposed"))
        if held:
            return out
    taken: dict[str, float] = {}  # per layer, the bucket share the earlier experiments hold
    layer_bucket: dict[str, int] = {}
    for exp in config.experiments:
        low = taken.get(exp.layer, 0.0)
        taken[exp.layer] = low + exp.traffic
        if not _active(exp, now_ms):
            continue
        if exp.layer not in layer_bucket:
            layer_bucket[exp.layer] = bucket(f"layer\x1f{exp.layer}", user_id)
        b = layer_bucket[exp.layer]
        if not (low * BUCKETS <= b < (low + exp.traffic) * BUCKETS):
            continue
        if exp.kind == "interleave":
            # Everyone in it sees the drafted list; the "variant" is the interleaved arm.
            out.append(Assignment(exp.name, "interleaved", "interleave",
                                  teams=tuple((v.name, v.changes) for v in exp.variants)))
        else:
            v = exp.variants[_variant(exp, user_id)]
            out.append(Assignment(exp.name, v.name, "ab", v.changes))
    return out


def merged_changes(assignments: list[Assignment]) -> Changes:
    """The A/B variants' changes together (layers should change different knobs; a later layer wins a tie)."""
    changes = Changes()
    for a in assignments:
        if a.kind == "ab":
            changes = changes.merged(a.changes)
    return changes
