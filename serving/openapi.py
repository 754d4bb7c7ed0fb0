"""The OpenAPI 3.1 document served at ``/openapi.json``.

Hand-written for the HTTP shapes (they are small and we want every status code the server really sends listed) and
generated for the event bodies: the event schemas come from the msgspec structs in ``schemas/events.py``, the same
contract the decoder enforces, so the document cannot drift from what POST /v1/events accepts. The integration test
validates every response it gets against the schema of its path and status.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from models.experiments.config import ExperimentsConfig
from schemas.decoder import MAX_DEPTH
from schemas.events import DEVICES, Event
from serving.http_validation import ID_MAX, ID_PATTERN, K_DEFAULT, K_MAX, K_MIN, PER_ROW_MAX, ROWS_MAX

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_NUMBER = {"type": "number"}
_STRING = {"type": "string"}
_ID = {"type": "string", "minLength": 1, "maxLength": ID_MAX, "pattern": ID_PATTERN,
       "description": "1 to 128 characters, no control characters (NUL, tab, newlines) or line separators."}

_SHAPES: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error", "request_id"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string", "description": "The parameter, header or body part at fault."},
                    "message": _STRING,
                },
                "additionalProperties": False,
            },
            "request_id": _STRING,
            "written": {"const": "unknown", "description": "POST /v1/events' 503: the events may or may not have "
                        "been written (the broker did not acknowledge them within the deadline)."},
        },
        "additionalProperties": False,
    },
    "Refusal": {
        "type": "object",
        "required": ["index", "field", "reason"],
        "properties": {
            "index": {"type": "integer", "minimum": 0, "description": "Position in the posted array (0: one event)."},
            "field": {"type": "string", "description": "JSON path of the bad field: `$.context.local_hour`."},
            "reason": _STRING,
        },
        "additionalProperties": False,
    },
    "EventsAccepted": {
        "type": "object",
        "required": ["accepted", "refused", "request_id"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 1, "description": "Events published to Kafka."},
            "refused": {"type": "array", "items": _ref("Refusal")},
            "request_id": _STRING,
        },
        "additionalProperties": False,
    },
    "EventsRejected": {
        "type": "object",
        "required": ["error", "refused", "request_id"],
        "properties": {
            "error": _ref("ErrorDetail"),
            "refused": {"type": "array", "items": _ref("Refusal")},
            "request_id": _STRING,
        },
        "additionalProperties": False,
    },
    "ErrorDetail": {
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": _STRING, "message": _STRING},
        "additionalProperties": False,
    },
    "RecommendedItem": {
        "type": "object",
        "required": ["item_id", "score", "sources", "reason"],
        "properties": {
            "item_id": _STRING,
            "score": _NUMBER,
            "sources": {"type": "array", "items": _STRING, "description": "Candidate sources that proposed it."},
            "reason": {"type": ["string", "null"]},
        },
    },
    "Recommendations": {
        "type": "object",
        "required": ["user_id", "request_id", "model_version", "items", "degraded", "timings_ms"],
        "properties": {
            "user_id": _STRING,
            "request_id": _STRING,
            "model_version": {"type": ["string", "null"]},
            "items": {"type": "array", "items": _ref("RecommendedItem")},
            "degraded": {"type": "boolean", "description": "True when a part (Redis, a source, ranker) was missing."},
            "timings_ms": {"type": "object", "additionalProperties": _NUMBER},
            "experiments": {
                "type": "array", "description": "The experiments this answer was part of (absent: none). The "
                "answer's exposure went to Kafka; send its `request_id` with the events that follow.",
                "items": {"type": "object", "required": ["name", "variant"],
                          "properties": {"name": _STRING, "variant": _STRING}, "additionalProperties": False},
            },
        },
    },
    "Conflict": {
        "type": "object",
        "required": ["error", "request_id", "stored_version"],
        "properties": {"error": {"type": "object"}, "request_id": _STRING,
                       "stored_version": {"type": "integer", "description": "The stored document's version."}},
    },
    "HomepageItem": {
        "type": "object",
        "required": ["item_id", "title", "genres", "year", "score", "sources"],
        "properties": {
            "item_id": _STRING,
            "title": _STRING,
            "genres": {"type": "array", "items": _STRING},
            "year": {"type": ["integer", "null"]},
            "score": _NUMBER,
            "sources": {"type": "array", "items": _STRING,
                        "description": "Candidate sources that proposed it (the row's reason for titles the "
                                       "ranker did not score)."},
            "progress": {"type": "number", "minimum": 0, "maximum": 1,
                         "description": "`continue_watching` only: how far in (0 when unknown)."},
        },
        "additionalProperties": False,
    },
    "HomepageRow": {
        "type": "object",
        "required": ["id", "title", "reason", "score", "items"],
        "properties": {
            "id": {"type": "string", "description": "`continue_watching`, `top_picks`, `because_you_watched:{item}`, "
                   "`trending_country`, `trending_device`, `trending`, `new_releases`, `genre:{name}` (`popular` "
                   "in a degraded answer)."},
            "title": {"type": "string", "description": "What the page shows: `Because you watched Heat (1995)`."},
            "reason": {"type": "string", "description": "The row's kind (the id without its argument)."},
            "score": {"type": "number", "description": "The row's worth for this user: the share of the user's "
                      "engagement the ranker expects its first titles to get (rows are sorted by it)."},
            "seed_item_id": {"type": "string", "description": "`because_you_watched` rows: the watched title."},
            "genre": {"type": "string", "description": "`genre` rows: the genre."},
            "items": {"type": "array", "items": _ref("HomepageItem")},
        },
        "additionalProperties": False,
    },
    "Homepage": {
        "type": "object",
        "required": ["user_id", "request_id", "model_version", "rows", "degraded", "timings_ms"],
        "properties": {
            "user_id": _STRING,
            "request_id": _STRING,
            "model_version": {"type": ["string", "null"]},
            "rows": {"type": "array", "items": _ref("HomepageRow")},
            "degraded": {"type": "boolean", "description": "True when a part (Redis, a source, ranker) was missing."},
            "degraded_reasons": {"type": "array", "items": _STRING},
            "timings_ms": {"type": "object", "additionalProperties": _NUMBER},
        },
    },
    "SimilarItem": {
        "type": "object",
        "required": ["item_id", "score"],
        "properties": {
            "item_id": _STRING,
            "score": _NUMBER,
            "title": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]},
        },
    },
    "Similar": {
        "type": "object",
        "required": ["item_id", "request_id", "model_version", "items", "degraded"],
        "properties": {
            "item_id": _STRING,
            "request_id": _STRING,
            "model_version": {"type": ["string", "null"]},
            "items": {"type": "array", "items": _ref("SimilarItem")},
            "degraded": {"type": "boolean"},
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["ready"],
        "properties": {
            "ready": {"type": "boolean"},
            "bundle": {"type": ["string", "null"], "description": "Version of the loaded model bundle."},
            "redis": {"type": "boolean"},
            "kafka": {"type": "boolean", "description": "The broker answered lately (a metadata probe every 2 s, "
                      "and each publish); false makes the replica unready."},
            "index": {
                "type": "object",
                "properties": {
                    "size": {"type": "integer"},
                    "lag": {"type": "integer", "description": "item-vectors records not yet applied."},
                    "caught_up": {"type": "boolean"},
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
        "additionalProperties": False,
    },
}

_ERROR_400 = _json(_ref("Error"), "A parameter is invalid; `error.field` names it.")
_REQUEST_ID_HEADER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Echoed back (header and body) when it is 1 to 128 of [A-Za-z0-9._:-]; otherwise one is made.",
    "schema": {"type": "string"},
}


def _k(maximum: int = K_MAX) -> dict[str, Any]:
    return {
        "name": "k",
        "in": "query",
        "required": False,
        "description": "How many items to return.",
        "schema": {"type": "integer", "minimum": K_MIN, "maximum": maximum, "default": K_DEFAULT},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


# A read request over the server's adaptive admission limit (serving/admission.py): refused at once, never queued.
_SHED_503 = {
    **_json(_ref("Error"), "The server is at its admission limit (the error's field is `capacity`); nothing was "
                           "computed. Retry after the `Retry-After` seconds, on this or another replica."),
    "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer", "minimum": 0}}},
}


# API keys (serving/auth.py): 401 and 403 name the header (`error.field` is `X-API-Key`).
_AUTH_401 = _json(_ref("Error"), "No `X-API-Key`, or one that is unknown or revoked (`error.field`: `X-API-Key`).")
_AUTH_403 = _json(_ref("Error"), "The key lacks a scope this request needs; the message names it.")
_READ_AUTH = {
    "401": {**_AUTH_401, "description": "Only with STREAMREC_AUTH_READS on: " + _AUTH_401["description"]},
    "403": {**_AUTH_403, "description": "Only with STREAMREC_AUTH_READS on: the key lacks `recommendations:read`."},
}
# Reads need a key only when the operator turns STREAMREC_AUTH_READS on: the empty requirement says "or none".
_READ_SECURITY = [{"ApiKey": []}, {}]
_SECURITY_SCHEMES = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "A key of `streamrec keys create --scopes ...` (or the operator's STREAMREC_API_KEY, which "
                       "has every scope). Scopes: `events:write` (interaction events), `catalog:write` "
                       "(`item_upsert`, `item_remove`), `recommendations:read` (reads, when STREAMREC_AUTH_READS "
                       "is on), `admin` (all). Writes need one unless the operator set STREAMREC_AUTH=off.",
    },
}


# The request context both reads take.
_CONTEXT = [
    _query("device", {"type": "string", "enum": list(DEVICES)}, "Device of the request."),
    _query("country", {"type": "string", "pattern": "^[A-Za-z]{2}$"}, "ISO 3166-1 alpha-2 country (any case)."),
    _query("hour", {"type": "integer", "minimum": 0, "maximum": 23}, "Local hour of the user."),
    _query("now", {"type": "integer", "minimum": 0, "maximum": 4_102_444_800_000},
           "The request's clock in epoch ms (default: the wall clock). For replays and "
           "backtests of a recorded log: decays, recency and new releases as of that time."),
]


def _paths() -> dict[str, Any]:
    return {
        # The browser page (serving/page.py); `add_page_routes` registers these two.
        "/": {
            "get": {
                "operationId": "page",
                "summary": "The browser page: pick a user, see their homepage rows, play and complete titles "
                           "(POSTed with the page's own events:write key, STREAMREC_PAGE_API_KEY).",
                "responses": {"200": {"description": "The page (Cache-Control: no-store: it carries the page key).",
                                      "content": {"text/html": {"schema": _STRING}}}},
            }
        },
        "/static/{name}": {
            "get": {
                "operationId": "pageFile",
                "summary": "One of the page's files (serving/static/), with an ETag; no other file is reachable.",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": _STRING}],
                "responses": {
                    "200": {"description": "The file (Cache-Control: no-cache).", "content": {
                        "text/css": {"schema": _STRING}, "text/javascript": {"schema": _STRING}}},
                    "304": {"description": "Unchanged since the ETag sent in If-None-Match."},
                    "404": _json(_ref("Error"), "No such file of the page."),
                },
            }
        },
        "/v1/recommendations/{user_id}": {
            "get": {
                "operationId": "recommend",
                "summary": "Top-k titles for a user (two-stage: candidates, Wide & Deep ranking, post-processing).",
                "parameters": [
                    {"name": "user_id", "in": "path", "required": True, "schema": _ID},
                    _k(),
                    *_CONTEXT,
                    _REQUEST_ID_HEADER,
                ],
                "responses": {
                    "200": _json(_ref("Recommendations"),
                                 "Always for a valid request; `degraded` says when a part was missing. "
                                 "An unknown user gets a cold-start list."),
                    "400": _ERROR_400,
                    **_READ_AUTH,
                    "503": _SHED_503,
                },
                "security": _READ_SECURITY,
            }
        },
        "/v1/homepage/{user_id}": {
            "get": {
                "operationId": "homepage",
                "summary": "A user's homepage: rows (continue watching, because you watched, top picks, trending, "
                           "new releases, genres), ordered for the user, each title at most once on the page.",
                "parameters": [
                    {"name": "user_id", "in": "path", "required": True, "schema": _ID},
                    _query("rows", {"type": "integer", "minimum": 1, "maximum": ROWS_MAX, "default": 8},
                           "How many rows."),
                    _query("per_row", {"type": "integer", "minimum": 1, "maximum": PER_ROW_MAX, "default": 10},
                           "Titles per row."),
                    *_CONTEXT,
                    _REQUEST_ID_HEADER,
                ],
                "responses": {
                    "200": _json(_ref("Homepage"), "Always for a valid request; `degraded` says when a part was "
                                 "missing. An unknown user gets cold-start rows."),
                    "400": _ERROR_400,
                    **_READ_AUTH,
                    "503": _SHED_503,
                },
                "security": _READ_SECURITY,
            }
        },
        "/v1/items/{item_id}/similar": {
            "get": {
                "operationId": "similar",
                "summary": "Titles similar to one title (ANN over item vectors, content vectors as the fallback).",
                "parameters": [{"name": "item_id", "in": "path", "required": True, "schema": _ID}, _k(),
                               _REQUEST_ID_HEADER],
                "responses": {
                    "200": _json(_ref("Similar"), "Similar titles."),
                    "400": _ERROR_400,
                    **_READ_AUTH,
                    "404": _json(_ref("Error"), "The title is not in the catalogue."),
                    "503": _SHED_503,
                },
                "security": _READ_SECURITY,
            }
        },
        "/v1/events": {
            "post": {
                "operationId": "publishEvents",
                "summary": "Validate events, publish the valid ones to Kafka (interactions by user, catalog by item).",
                "parameters": [_REQUEST_ID_HEADER],
                "security": [{"ApiKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"oneOf": [
                        _ref("Event"), {"type": "array", "minItems": 1, "items": _ref("Event")},
                    ]}}},
                },
                "responses": {
                    "202": _json(_ref("EventsAccepted"),
                                 "At least one event was published; the refused ones are listed by index."),
                    "400": _json(_ref("EventsRejected"),
                                 "Not JSON, nested deeper than " + str(MAX_DEPTH) + " levels, an empty or too "
                                 "large array, or no valid event."),
                    "401": _AUTH_401,
                    "403": _json(_ref("Error"), "The key lacks a scope the batch needs: `events:write` for "
                                 "interaction events, `catalog:write` for `item_upsert`/`item_remove` (both for a "
                                 "mixed batch); the message names the missing one. Nothing was published."),
                    "413": _json(_ref("Error"), "The body is larger than STREAMREC_MAX_BODY_BYTES."),
                    "429": {
                        **_json(_ref("Error"), "The key is over its rate (STREAMREC_RATE_LIMIT_EVENTS_PER_S events "
                                "per second, counted per server replica, with a burst of STREAMREC_RATE_LIMIT_BURST; "
                                "`error.field`: `rate`). Nothing was published; retry after `Retry-After`."),
                        "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                                    "schema": {"type": "integer", "minimum": 1}}},
                    },
                    "503": _json(_ref("Error"), "Kafka did not acknowledge the events within "
                                 "STREAMREC_EVENTS_PUBLISH_TIMEOUT_S (1 s): they may or may not have been written "
                                 "(`written: unknown`); retrying them with the same `event_id` is safe (the worker "
                                 "applies each event_id once); `Retry-After: 1`."),
                },
            }
        },
        "/v1/experiments": {
            "get": {
                "operationId": "getExperiments",
                "summary": "The experiments document every replica follows (admin scope).",
                "parameters": [_REQUEST_ID_HEADER],
                "security": [{"ApiKey": []}],
                "responses": {"200": _json(_ref("ExperimentsConfig"), "The document."), "401": _AUTH_401,
                              "403": _json(_ref("Error"), "The key lacks the `admin` scope.")},
            },
            "put": {
                "operationId": "putExperiments",
                "summary": "Replace the experiments document (admin scope); every replica follows it within "
                           "STREAMREC_EXPERIMENTS_REFRESH_S, without a restart.",
                "parameters": [_REQUEST_ID_HEADER],
                "security": [{"ApiKey": []}],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("ExperimentsConfig")}}},
                "responses": {
                    "200": _json(_ref("ExperimentsConfig"), "Stored; the document now followed."),
                    "400": _json(_ref("Error"), "Not a document of this schema: `error.field` names the part "
                                 "(`experiments[0].traffic`)."),
                    "422": _json(_ref("Error"), "A document of this schema that breaks a rule across its fields "
                                 "(a name used twice, a layer's traffic over 1, stop not after start, an interleaving "
                                 "without exactly two variants); `error.field` names the part."),
                    "401": _AUTH_401,
                    "403": _json(_ref("Error"), "The key lacks the `admin` scope."),
                    "409": _json(_ref("Conflict"), "The stored document's version is as high or higher; send a "
                                 "higher `version`."),
                    "413": _json(_ref("Error"), "The body is larger than STREAMREC_MAX_BODY_BYTES."),
                    "503": _json(_ref("Error"), "Redis could not store it; retry (`Retry-After: 1`)."),
                },
            },
        },
        "/healthz": {"get": {"operationId": "health", "summary": "The process is up.",
                             "responses": {"200": _json(_ref("Health"), "Up.")}}},
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Bundle loaded, Redis reachable, index caught up with item-vectors.",
                "responses": {"200": _json(_ref("Readiness"), "Ready."),
                              "503": _json(_ref("Readiness"), "Not ready yet; the body says which part.")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus exposition of this process.",
                "responses": {"200": {"description": "Prometheus text format.",
                                      "content": {"text/plain": {"schema": _STRING}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")},
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The document (built once; treat it as read-only)."""
    (event_schema, _), event_components = msgspec.json.schema_components((Event, ExperimentsConfig),
                                                                         ref_template=_REF)
    components = {**event_components, "Event": event_schema, **_SHAPES}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamrec",
            "version": "1",
            "description": "Real-time recommendations. Every error body is `{error: {field, message}, request_id}`; "
                           "unknown routes answer 404 and wrong methods 405 (with an `Allow` header) with the same "
                           "shape. A query parameter sent empty (`k=`) is invalid (400), not its default. Integers "
                           "in events are JSON integer literals: `3`, not `3.0`.",
        },
        "paths": _paths(),
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }


def response_schema(path: str, method: str, status: int) -> dict[str, Any] | None:
    """A self-contained JSON Schema (2020-12) for the JSON body of one documented response, or None when the
    document lists no JSON body for it. The components ride along so that ``$ref``s resolve inside the schema."""
    document = openapi_document()
    response = document["paths"].get(path, {}).get(method.lower(), {}).get("responses", {}).get(str(status))
    if response is None:
        raise KeyError(f"{method.upper()} {path} does not document status {status}")
    media = response.get("content", {}).get("application/json")
    if media is None:
        return None
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **media["schema"],
            "components": document["components"]}
