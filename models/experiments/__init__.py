"""Experiments: configuration, assignment, interleaving, the per-variant data and the statistics of the report.

Pure code (no I/O): the server assigns and changes requests with it (serving/experiments.py), the worker counts
exposures and outcomes (streams/experiments.py), and ``streamrec experiments report`` computes the report.
"""
