"""Dense linear algebra the models share: the inverse of a symmetric positive definite matrix by Cholesky."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import lapack


def spd_inverse_lower(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """The inverse of SPD ``matrix`` by Cholesky (about half the work of LU), in place when ``matrix`` is a
    Fortran-ordered float64 array (one buffer for the matrix, its factor and the inverse: what lets EASE invert
    large Gram matrices). Only the lower triangle of the result is the inverse; the upper one is left as it was."""
    chol, info = lapack.dpotrf(matrix, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"the matrix is not positive definite (dpotrf {info}); is the ridge λ > 0?")
    inverse, info = lapack.dpotri(chol, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dpotri failed ({info})")
    return np.asarray(inverse)
