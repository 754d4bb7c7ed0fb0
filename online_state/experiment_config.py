"""The experiments document every server replica follows: one Redis STRING, JSON, with its version inside.

Kept beside the API keys, outside ``{prefix}:*``: ``--rebuild`` deletes what Kafka can rebuild, and the experiments
are configuration, not state derived from Kafka. A write only replaces a document of a lower version (checked and set
in one Lua call, so two operators or two starting replicas cannot overwrite a newer one with an older one).
"""

from __future__ import annotations

from typing import Any, Final

from models.experiments.config import ExperimentsConfig, encode_config, parse_config
from online_state.keys import KeyLayout

# KEYS[1] the document; ARGV[1] the new JSON, ARGV[2] its version. Returns {1 if written else 0, stored version}.
_SET_IF_NEWER: Final = """
local cur = redis.call('GET', KEYS[1])
local have = -1
if cur then have = tonumber(cjson.decode(cur)['version']) or -1 end
if tonumber(ARGV[2]) > have then
  redis.call('SET', KEYS[1], ARGV[1])
  return {1, tonumber(ARGV[2])}
end
return {0, have}
"""


def config_key(keys: KeyLayout) -> str:
    return f"{keys.prefix}-config:experiments"


async def read_config(redis: Any, keys: KeyLayout) -> tuple[bytes | None, ExperimentsConfig | None]:
    """The stored document's bytes and its parse (``None``, ``None``: none stored)."""
    raw = await redis.get(config_key(keys))
    if raw is None:
        return None, None
    return bytes(raw), parse_config(bytes(raw))


async def store_if_newer(redis: Any, keys: KeyLayout, config: ExperimentsConfig) -> tuple[bool, int]:
    """Store ``config`` unless the stored one's version is as high: (whether it was written, the stored version)."""
    written, stored = await redis.eval(_SET_IF_NEWER, 1, config_key(keys), encode_config(config),
                                       str(config.version))
    return bool(written), int(stored)
