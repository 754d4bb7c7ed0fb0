"""Query and path parameters of the read endpoints: parsed, range-checked, or a :class:`ParamError` naming the field.

Pure functions over a ``Mapping[str, str]`` so that any HTTP framework (and the unit tests) can use them. The limits
are the ones the event contracts use (``schemas/events.py``), so a request and the events it leads to agree.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from models.recommend.homepage import HomepageRequest
from models.recommend.pipeline import RecommendRequest
from schemas.events import DEVICES, ID_FORBIDDEN, ID_MAX_LENGTH

K_MIN: Final = 1
K_MAX: Final = 200
K_DEFAULT: Final = 20
ID_MAX: Final = ID_MAX_LENGTH  # schemas.events.Id
ID_PATTERN: Final = f"^[^{ID_FORBIDDEN}]*$"  # the event contract's id characters (no control characters)
_BAD_ID = re.compile(f"[{ID_FORBIDDEN}]")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
# A caller's X-Request-ID is echoed only when it is short and printable-safe (it lands in logs and headers).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(frozen=True, slots=True)
class ParamError(Exception):
    """A request parameter or body part is invalid; ``field`` names it as the client sent it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# Request clock bounds: epoch ms from 1970 to 2100 (what the event schema accepts for `ts`).
NOW_MAX = 4_102_444_800_000


def check_id(value: str, field: str) -> str:
    if not value or len(value) > ID_MAX:
        raise ParamError(field, f"must be 1 to {ID_MAX} characters")
    if _BAD_ID.search(value):
        raise ParamError(field, "must not contain control characters (NUL, tab, newlines) or line separators")
    return value


def _present(query: Mapping[str, str], field: str) -> str | None:
    """The parameter's value, None when absent; an empty value (``k=``) is invalid, as the OpenAPI document says."""
    raw = query.get(field)
    if raw == "":
        raise ParamError(field, "must not be empty (leave the parameter out for its default)")
    return raw


def _int(query: Mapping[str, str], field: str, low: int, high: int, default: int | None) -> int | None:
    raw = _present(query, field)
    if raw is None:
        return default
    if len(raw) > 20:  # no int() of a 100 KB digit string
        raise ParamError(field, f"must be an integer from {low} to {high}, got {raw[:40]!r}...")
    try:
        value = int(raw)
    except ValueError:
        raise ParamError(field, f"must be an integer from {low} to {high}, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ParamError(field, f"must be from {low} to {high}, got {value}")
    return value


def parse_k(query: Mapping[str, str]) -> int:
    k = _int(query, "k", K_MIN, K_MAX, K_DEFAULT)
    assert k is not None
    return k


def parse_recommend_request(user_id: str, request_id: str, query: Mapping[str, str]) -> RecommendRequest:
    """The request object the pipeline takes, from the path's ``user_id`` and the query: ``k`` 1..200 (default 20),
    ``device`` one of the schema's devices, ``country`` ISO 3166 alpha-2 (any case, answered upper-case), ``hour``
    0..23, ``now`` epoch ms (the request's clock, for replays of recorded logs; default the wall clock). An empty
    value (``k=``) is a 400, not the default."""
    check_id(user_id, "user_id")
    device = _present(query, "device")
    if device is not None and device not in DEVICES:
        raise ParamError("device", f"must be one of {', '.join(DEVICES)}, got {device[:40]!r}")
    country = _present(query, "country")
    if country is not None:
        if not _COUNTRY.match(country):
            raise ParamError("country", f"must be an ISO 3166-1 alpha-2 code such as US, got {country[:40]!r}")
        country = country.upper()
    return RecommendRequest(
        user_id=user_id, request_id=request_id, k=parse_k(query), device=device, country=country,
        hour=_int(query, "hour", 0, 23, None), now_ms=_int(query, "now", 0, NOW_MAX, None),
    )


ROWS_MAX: Final = 20
PER_ROW_MAX: Final = 50


def parse_homepage_request(user_id: str, request_id: str, query: Mapping[str, str]) -> HomepageRequest:
    """The homepage's request: the recommendation request's parameters (``k`` is not one) plus ``rows`` 1..20
    (default 8) and ``per_row`` 1..50 (default 10)."""
    if "k" in query:
        raise ParamError("k", "the homepage takes rows and per_row, not k")
    rows = _int(query, "rows", 1, ROWS_MAX, 8)
    per_row = _int(query, "per_row", 1, PER_ROW_MAX, 10)
    assert rows is not None and per_row is not None
    base = parse_recommend_request(user_id, request_id, query)
    return HomepageRequest(base=replace(base, k=per_row), rows=rows, per_row=per_row)


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is a safe token, else a new one (32 hex digits)."""
    if header and _REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex
