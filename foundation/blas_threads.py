"""One BLAS thread per service process (the API server and the stream worker).

numpy's OpenBLAS starts a thread per core and lets each *spin* between calls. The small products of
a request (``vectors[rows] @ user``, ~1,000 x 64) gain nothing from a second thread, and the spinning
takes a core from the other processes (server CPU per request: ``benchmarks/bench_serving.py``).
Concurrency comes from more processes (``serve --workers``, more stream workers), not from threads.

threadpoolctl sets the limit at runtime, whatever numpy was linked with and whenever it was
imported; the setting ``STREAMREC_BLAS_THREADS`` (default 1) sets the number.
"""

from __future__ import annotations

from typing import Any

from threadpoolctl import threadpool_limits

_limits: Any = None  # kept referenced: the limit lasts for the process


def limit_blas_threads(threads: int = 1) -> int:
    """Limit the BLAS thread pools of this process to ``threads``; returns the limit applied."""
    global _limits
    _limits = threadpool_limits(limits=max(1, threads), user_api="blas")
    return max(1, threads)
