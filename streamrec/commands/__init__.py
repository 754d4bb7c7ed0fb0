"""CLI command groups: each module exposes ``register(app)`` and imports the tools it drives at its top
(:mod:`streamrec.cli` imports a module only when one of its commands runs)."""
