"""``streamrec demo``: its steps (log, bundle, replay, wait), its long-running apps, and its last act."""
