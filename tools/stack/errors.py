"""The one exception type the local stack raises for problems a user can act on."""

from __future__ import annotations


class StackError(RuntimeError):
    """A failure of `streamrec stack` with a message meant for the user (no traceback needed)."""
