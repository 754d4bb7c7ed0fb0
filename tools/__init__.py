"""Tools for people and benchmarks, above the roles: the local stack, datasets, replay, catch-up, the
demo, the streaming evaluation and the benchmark runner. Only the ``streamrec`` CLI sits above them.
"""
