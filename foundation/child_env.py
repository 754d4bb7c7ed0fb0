"""Environment for a child process (a worker, a server) that must use exactly these settings."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

from foundation.settings import ENV_PREFIX, Settings


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) plus one ``STREAMREC_*`` variable per setting.

    Every field is written, not only the ones that differ from the defaults, so that a variable in
    the parent's environment can never win over what the caller chose.
    """
    env = dict(os.environ if base is None else base)
    for name, value in settings.model_dump().items():
        if value is None:
            env.pop(f"{ENV_PREFIX}{name.upper()}", None)
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, SecretStr):  # dumped masked: the child needs the secret itself
            text = value.get_secret_value()
        elif isinstance(value, Path):
            text = str(value.resolve()) if not value.is_absolute() else str(value)
        else:
            text = str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env
