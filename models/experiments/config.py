"""The experiments file: what runs, on whom, and what each variant changes.

A versioned document (TOML or JSON; the same shape as the body of ``PUT /v1/experiments``)::

    version = 3
    [holdout]                       # optional: users who get no experiment at all (a long-running control)
    share = 0.05
    salt = "holdout-2026"

    [[experiments]]
    name = "ranker"                 # the name the report takes
    layer = "ranking"               # experiments of one layer split its traffic: a user is in at most one of them
    salt = "ranker-1"               # a new salt reshuffles who is in which variant
    traffic = 1.0                   # share of the layer's traffic (the layer's experiments add up to <= 1)
    kind = "ab"                     # or "interleave": one list drafted from two variants' rankings
    start = 2026-12-01T00:00:00Z    # optional; epoch ms, or in a TOML file its own datetime (default: always)
    stop = 2027-01-01T00:00:00Z     # optional
    [[experiments.variants]]
    name = "control"
    weight = 1
    [[experiments.variants]]
    name = "retrieval_order"
    weight = 1
    changes = { ranker = false }

What a variant can change (:class:`Changes`): the model bundle version, candidate budgets per source, the ranker on
or off, the user's online state on or off (``online_state = false``: retrieval uses the bundle's history and vector
of the user, i.e. a frozen model), and the post-processing knobs (diversity, boosts, freshness). Anything else is
refused with the field named, so a typo never silently runs an A/A.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Struct

from models.candidates import CandidateConfig

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Share = Annotated[float, Meta(ge=0.0, le=1.0)]
SOURCES: Final = tuple(CandidateConfig().budgets())
# The sources a variant may budget (CandidateConfig.budgets()'s keys; a unit test keeps the two equal). In the type,
# so that the JSON Schema of PUT /v1/experiments lists them and an unknown one is a schema error.
Source = Literal["ann_cf", "content", "popular", "new_releases", "byw", "item_item", "sequence"]
# Epoch ms, bounded like the events' timestamps.
EpochMs = Annotated[int, Meta(ge=0, le=4_102_444_800_000, description="Epoch milliseconds (UTC).")]
BUCKETS: Final = 10_000  # hash buckets per layer: traffic shares are exact to 0.01%


class Changes(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What one variant changes on the requests it serves; every field unset: the default system."""

    bundle: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    candidates: dict[Source, Annotated[int, Meta(ge=0, le=5000)]] | None = None
    ranker: bool | None = None
    online_state: bool | None = None
    diversity: Share | None = None
    original_boost: Annotated[float, Meta(ge=-10.0, le=10.0)] | None = None
    new_release_boost: Annotated[float, Meta(ge=-10.0, le=10.0)] | None = None
    freshness_half_life_days: Annotated[float, Meta(gt=0.0, le=36500.0)] | None = None
    # For the SRM proof only: drop this share of the variant's exposures (a deliberately broken logging path).
    drop_exposures: Share | None = None

    def merged(self, other: Changes) -> Changes:
        """These changes with ``other``'s set fields on top (a user in two layers gets both)."""
        mine = msgspec.structs.asdict(self)
        mine.update({k: v for k, v in msgspec.structs.asdict(other).items() if v is not None})
        return Changes(**mine)

    def post(self) -> dict[str, Any]:
        """The post-processing fields this variant sets (for ``dataclasses.replace`` of a PostConfig)."""
        fields = ("diversity", "original_boost", "new_release_boost", "freshness_half_life_days")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


class Variant(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    weight: Annotated[float, Meta(gt=0.0, le=1e6)] = 1.0
    changes: Changes = msgspec.field(default_factory=Changes)


class Experiment(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    variants: Annotated[list[Variant], Meta(min_length=1, max_length=16)]
    layer: Name = "default"
    salt: Annotated[str, Meta(min_length=1, max_length=128)] | None = None  # default: the name
    traffic: Share = 1.0
    kind: Literal["ab", "interleave"] = "ab"
    # Epoch ms; a TOML file may write its own datetimes (load_config converts them; one without a zone is UTC).
    start: EpochMs | None = None
    stop: EpochMs | None = None
    description: str = ""

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name


class Holdout(Struct, kw_only=True, forbid_unknown_fields=True):
    share: Share = 0.0
    salt: Annotated[str, Meta(min_length=1, max_length=128)] = "holdout"


class ExperimentsConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    # Below 2**53: compared by the store's Lua script, where numbers are doubles.
    version: Annotated[int, Meta(ge=0, le=2**53 - 1)] = 0
    holdout: Holdout = msgspec.field(default_factory=Holdout)
    experiments: list[Experiment] = msgspec.field(default_factory=list)

    def get(self, name: str) -> Experiment | None:
        return next((e for e in self.experiments if e.name == name), None)


HOLDOUT_EXPERIMENT: Final = "holdout"  # the holdout's pseudo-experiment: variants "holdout" and "exposed"


class ConfigError(ValueError):
    """An invalid experiments document; ``field`` names the offending part (``experiments[1].variants``).

    ``rule``: the document has the right shape (its JSON Schema holds) but breaks a rule across fields that a schema
    cannot say (unique names, a layer's traffic, stop after start, two teams to interleave): the API's 422, where a
    malformed document is a 400."""

    def __init__(self, field: str, message: str, *, rule: bool = False) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.rule = rule


def _ms(value: Any) -> Any:
    """A TOML datetime as epoch ms (one without a zone is UTC); anything else as it is (the struct checks it)."""
    if isinstance(value, datetime):
        return int((value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp() * 1000)
    return value


def _check(config: ExperimentsConfig) -> ExperimentsConfig:
    """The rules a struct cannot say: unique names, a layer's traffic <= 1, interleaving has two variants."""
    names: set[str] = set()
    layers: dict[str, float] = {}
    for i, exp in enumerate(config.experiments):
        where = f"experiments[{i}]"
        if exp.name in names or exp.name == HOLDOUT_EXPERIMENT:
            raise ConfigError(f"{where}.name", f"{exp.name!r} is used twice or reserved", rule=True)
        names.add(exp.name)
        variants = [v.name for v in exp.variants]
        if len(set(variants)) != len(variants):
            raise ConfigError(f"{where}.variants", "variant names must be unique", rule=True)
        if exp.kind == "interleave" and len(variants) != 2:
            raise ConfigError(f"{where}.variants", "an interleaving experiment has exactly two variants", rule=True)
        if exp.start is not None and exp.stop is not None and exp.stop <= exp.start:
            raise ConfigError(f"{where}.stop", "stop is not after start", rule=True)
        layers[exp.layer] = layers.get(exp.layer, 0.0) + exp.traffic
        if layers[exp.layer] > 1.0 + 1e-9:
            raise ConfigError(f"{where}.traffic", f"layer {exp.layer!r} has more than all its traffic "
                              f"({layers[exp.layer]:.3f} > 1)", rule=True)
    return config


def _field_of(exc: msgspec.ValidationError) -> str:
    # msgspec says "... - at `$.experiments[0].traffic`" (or "at `key` in `$.…candidates`" for a dict's key); the
    # API names the field without the "$.".
    paths = re.findall(r"`(\$[^`]*)`", str(exc))
    return paths[-1].removeprefix("$").removeprefix(".") or "body" if paths else "body"


def parse_config(data: Mapping[str, Any] | bytes) -> ExperimentsConfig:
    """A validated config from JSON bytes or a decoded mapping; :class:`ConfigError` naming the field."""
    try:
        if isinstance(data, bytes | bytearray):
            config = msgspec.json.decode(data, type=ExperimentsConfig)
        else:
            config = msgspec.convert(data, ExperimentsConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(_field_of(exc), str(exc).split(" - at `")[0]) from exc
    except msgspec.DecodeError as exc:
        raise ConfigError("body", f"not JSON: {exc}") from exc
    return _check(config)


def load_config(path: Path) -> ExperimentsConfig:
    """The experiments file (``.toml`` or ``.json``)."""
    raw = path.read_bytes()
    if path.suffix == ".toml":
        try:
            doc = tomllib.loads(raw.decode())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("file", f"{path}: not TOML: {exc}") from exc
        for exp in doc.get("experiments", []) if isinstance(doc.get("experiments"), list) else []:
            if isinstance(exp, dict):
                exp.update({k: _ms(exp[k]) for k in ("start", "stop") if k in exp})
        return parse_config(doc)
    return parse_config(raw)


def encode_config(config: ExperimentsConfig) -> bytes:
    return msgspec.json.encode(config)
