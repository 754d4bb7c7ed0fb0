"""The exposure of one answer: which experiments and variants it was part of, what it showed, how it went.

Built by the HTTP layer from the body the service answered (``experiments`` and the private ``_teams``, popped
here so the client sees only ``[{name, variant}]``). A variant with ``drop_exposures`` (the SRM proof's deliberately
broken logging path) loses that share of its users' exposures, by a hash of the user: a client segment whose
logging is broken, as in the field.
"""

from __future__ import annotations

import time
from typing import Any

from models.experiments.assignment import bucket
from models.experiments.config import BUCKETS, ExperimentsConfig
from models.recommend.pipeline import RecommendRequest
from schemas.events import Context, ExposureTag
from serving.experiments import exposure_event
from serving.http_events import ValidEvent


def _dropped(config: ExperimentsConfig | None, name: str, variant: str, user_id: str) -> bool:
    exp = config.get(name) if config is not None else None
    if exp is None:
        return False
    share = next((v.changes.drop_exposures for v in exp.variants if v.name == variant), None)
    return bool(share) and bucket(f"drop\x1f{name}", user_id) < share * BUCKETS  # type: ignore[operator]


def exposure_of(req: RecommendRequest, body: dict[str, Any], seconds: float,
                config: ExperimentsConfig | None) -> ValidEvent | None:
    """The exposure event of this answer, or ``None`` (in no experiment, nothing shown, or dropped)."""
    teams: dict[str, list[str]] = body.pop("_teams", None) or {}
    ran = body.get("experiments")
    items = body.get("items") or []
    if not ran or not items:
        return None
    tags = [ExposureTag(name=e["name"], variant=e["variant"], teams=teams.get(e["name"]))
            for e in ran if not _dropped(config, e["name"], e["variant"], req.user_id)]
    if not tags:
        return None
    context = None
    if req.device is not None or req.country is not None or req.hour is not None:
        context = Context(device=req.device, country=req.country, local_hour=req.hour)  # type: ignore[arg-type]
    now = req.now_ms if req.now_ms is not None else int(time.time() * 1000)  # the request's clock, as assigned
    return exposure_event(req.user_id, req.request_id or "unknown", now, [i["item_id"] for i in items], tags,
                          seconds * 1000, bool(body.get("degraded")), context)
