"""Service processes run numpy's BLAS with the configured number of threads (one by default)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
from threadpoolctl import threadpool_info
from foundation.blas_threads import limit_blas_threads
import numpy
before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
limit_blas_threads({n})
after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
print(before, after)
assert after and all(t == {n} for t in after), after
"""


def test_limit_applies_to_every_blas_pool_in_the_process() -> None:
    for n in (1, 2):
        done = subprocess.run([sys.executable, "-c", CHECK.format(n=n)], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
