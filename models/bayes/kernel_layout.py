"""The packed data vector both compiled kernels read (:mod:`twolevel.models.bayes.kernels`,
numba; ``ckernels.c``, C) and :func:`twolevel.models.bayes.sampler.pack_data` writes::

    header (HEADER values, indices below) | β prior (3p) | σ prior (2) | sd prior (2q) |
    A_j (J q²) | B_j (J q p) | c_j (J q) | XᵀX (p²) | Xᵀy (p) | yᵀy

Kept apart from both kernels so that packing imports neither numba nor ctypes.
"""

from __future__ import annotations

__all__ = ["HEADER", "LKJ", "DIAG", "LOCATION_CODES", "POSITIVE_CODES"]

# header indices (ckernels.c: enum I_Q ... I_CONST)
Q, P, J, N, STRUCT, ETA, FBETA, FSIGMA, FSD, CONST = range(10)
HEADER = 10
LKJ, DIAG = 0, 1
LOCATION_CODES = {"Normal": 0, "StudentT": 1}
POSITIVE_CODES = {"HalfNormal": 0, "HalfStudentT": 1, "HalfCauchy": 2, "Exponential": 3,
                  "Gamma": 4}
