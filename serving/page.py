"""The browser page: ``GET /`` (``serving/static/index.html`` with a JSON config block) and ``GET /static/{name}``.

Plain HTML, CSS and JavaScript shipped in the package (no build step, no CDN: it must work on a machine without
internet). The page reads ``GET /v1/homepage/{user_id}`` and POSTs ``play``/``complete`` events to ``/v1/events``
with the page's own key (``STREAMREC_PAGE_API_KEY``).

That key is handed to every browser that opens the page, so it is only handed out when the server's key table says
it has the ``events:write`` scope and nothing more: a broader key (or the operator's static key) configured by
mistake is withheld, the page says why, and the log says which key *name* it was (never the key).

The static files are read once, when the routes are added, into a name -> bytes table: only the files that exist in
the package folder are served, so no request path can reach another file (``..``, encoded slashes, absolute paths
all miss the table). Each answer carries an ETag (``Cache-Control: no-cache``: the browser revalidates and gets a
304 while the file is unchanged, and a new release is picked up at once without versioned URLs).

This module takes the app's keys as arguments instead of importing :mod:`serving.app`: the app imports this module
to add the routes, and the layer contracts forbid import cycles between sibling modules.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
from aiohttp import web

from foundation.logs import get_logger
from foundation.settings import Settings
from online_state.api_keys import EVENTS_WRITE
from serving.auth import OPERATOR, KeyTable

log = get_logger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
SAMPLE_USERS: Final = 8  # the users the page offers to pick: the bundle's with the most history
CONFIG_MARK: Final = b"{{PAGE_CONFIG}}"  # where index.html takes the JSON config block
PAGE_SCOPES: Final = frozenset({EVENTS_WRITE})  # the only scopes a key handed to browsers may have

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
# Everything the page loads comes from this server; the config block is JSON (a data block, never executed), so no
# inline script or style needs allowing. connect-src 'self': the page calls this API only.
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_COMMON_HEADERS: Final = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static(folder: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every regular file directly in ``folder`` with a known content type, by name (read once)."""
    files: dict[str, StaticFile] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None or not path.is_file() or path.is_symlink():
            continue
        body = path.read_bytes()
        files[path.name] = StaticFile(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return files


def sample_users(model: Any, n: int = SAMPLE_USERS) -> list[dict[str, Any]]:
    """The ``n`` bundle users with the most events in the training histories (most first), as
    ``{"user_id", "events"}``; [] for a model without histories."""
    histories = getattr(model, "histories", None)
    user_index: dict[str, int] | None = getattr(model, "user_index", None)
    if histories is None or not user_index:
        return []
    lengths = np.diff(histories.ptr)
    if len(lengths) == 0:
        return []
    top = np.argsort(-lengths, kind="stable")[:n]
    wanted = {int(row): rank for rank, row in enumerate(top) if lengths[row] > 0}
    found: list[tuple[int, str, int]] = []
    for user_id, row in user_index.items():
        rank = wanted.get(row)
        if rank is not None:
            found.append((rank, user_id, int(lengths[row])))
    return [{"user_id": user_id, "events": events} for _, user_id, events in sorted(found)]


def page_key(settings: Settings, keys: KeyTable | None) -> tuple[str | None, str | None]:
    """The page's key when it may be handed to browsers, and otherwise why not (None when all is well).

    With ``STREAMREC_AUTH`` off, writes need no key: none is handed out."""
    configured = settings.page_api_key.get_secret_value() if settings.page_api_key is not None else ""
    if not settings.auth:
        return None, None
    if not configured:
        return None, ("no page key is configured (STREAMREC_PAGE_API_KEY): enter a key with the events:write "
                      "scope to play titles")
    record = keys.identify(configured) if keys is not None else None
    if record is None:
        return None, "the configured page key is not a valid key (unknown or revoked)"
    if record.name == OPERATOR or record.scopes != PAGE_SCOPES:
        # Withheld: this key would go to every visitor (the caller logs it, by name: keys never reach a log).
        return None, (f"the configured page key {record.name!r} has more than the events:write scope, so it is "
                      "not handed to browsers; make one with `streamrec keys create --name page --scopes "
                      "events:write`")
    return configured, None


def _config_block(config: dict[str, Any]) -> bytes:
    # Safe inside <script type="application/json">: '<' and '>' only occur inside JSON strings, where \u003c and
    # \u003e mean the same, so no value can close the element ("</script>") or open a comment.
    return (orjson.dumps(config).replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
            .replace(b"&", b"\\u0026"))


def add_page_routes(app: web.Application, settings: Settings, service_key: web.AppKey[Any],
                    keys_key: web.AppKey[KeyTable] | None = None) -> None:
    """Register ``GET /`` and ``GET /static/{name}`` on ``app``.

    ``service_key``: the app key of the recommendation service (its ``model_version`` and, when it has one, its
    ``model``: a :class:`models.recommend.model.RecommenderModel`); ``keys_key``: the app key of the process's
    :class:`serving.auth.KeyTable`, which decides whether the page key may be handed out (without it, never)."""
    files = load_static()
    if "index.html" not in files or CONFIG_MARK not in files["index.html"].body:
        raise RuntimeError(f"the page's index.html (with {CONFIG_MARK.decode()}) is missing from {STATIC_DIR}")
    template = files["index.html"].body
    cached_users: dict[str, list[dict[str, Any]]] = {}  # by model version: computed once per bundle
    logged_problems: set[str] = set()  # each withheld-key problem is logged once, not per page view

    def users_of(service: Any) -> list[dict[str, Any]]:
        version = str(service.model_version)
        if version not in cached_users:
            cached_users.clear()  # one bundle at a time (a hot reload replaces it)
            cached_users[version] = sample_users(getattr(service, "model", None))
        return cached_users[version]

    async def index(request: web.Request) -> web.Response:
        service = request.app.get(service_key)
        key, key_problem = page_key(settings, request.app.get(keys_key) if keys_key is not None else None)
        if key_problem is not None and settings.page_api_key is not None and key_problem not in logged_problems:
            logged_problems.add(key_problem)
            log.error("page key withheld from the browser page", why=key_problem)
        config = {
            "api_key": key,
            "key_problem": key_problem,
            "auth": settings.auth,
            "auth_reads": settings.auth and settings.auth_reads,
            "sample_users": users_of(service) if service is not None else [],
            "model_version": str(service.model_version) if service is not None else None,
            # The page's clock: the server's now (as it renders) plus the offset; the page keeps the difference to
            # its own clock, so its `now` and events' `ts` follow the server's time, shifted.
            "server_time_ms": int(time.time() * 1000),
            "clock_offset_ms": settings.page_clock_offset_ms,
        }
        body = template.replace(CONFIG_MARK, _config_block(config))
        # no-store: the body holds a key and the current model version.
        return web.Response(body=body, content_type="text/html", charset="utf-8", headers={
            **_COMMON_HEADERS, "Cache-Control": "no-store", "Content-Security-Policy": CSP})

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        found = files.get(name) if name != "index.html" else None  # the template only through /
        if found is None:
            raise web.HTTPNotFound(reason=f"no static file {name[:80]!r}")
        headers = {**_COMMON_HEADERS, "Cache-Control": "no-cache", "ETag": found.etag}
        if found.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
