"""One BLAS thread per service process (the API server and the stream worker).

numpy's OpenBLAS starts a thread per core and, after each call, lets its threads *spin* waiting for
the next one. A server does many small products per request (``vectors[rows] @ user``, ``content @
profile``, ~1,000 x 64) that gain nothing from a second thread, and on the 2-core machine that spin
took a core: at 50 req/s the server used 33 ms of CPU per request, 20 of them in an OpenBLAS thread
that py-spy could not see (it has no Python frames); with one BLAS thread 15 ms
(``benchmarks/bench_serving.py``; see the README's serving figures). Concurrency comes from more
processes (``serve --workers``, more stream workers), not from threads inside one.

threadpoolctl (the scikit-learn project's library) sets the limit at runtime, whatever numpy
was linked with and whenever it was imported; the setting ``STREAMREC_BLAS_THREADS`` (default 1)
sets the number.
"""

from __future__ import annotations

from typing import Any

_limits: Any = None  # kept referenced: the limit lasts for the process


def limit_blas_threads(threads: int = 1) -> int:
    """Limit the BLAS thread pools of this process to ``threads``; returns the limit applied."""
    global _limits
    from threadpoolctl import threadpool_limits

    _limits = threadpool_limits(limits=max(1, threads), user_api="blas")
    return max(1, threads)
