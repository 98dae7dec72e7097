"""The one check of vectors before Faiss sees them (index-build's rows, the server's and the
client's queries, uploaded features), numpy only: the client and the server stay torch-free.

Faiss computes squared L2 lengths and distances in float32, so a row is searchable only when its
squared length is finite in float32: no NaN, no infinity, and no values so large (about 1e19 and
up) that their squares overflow. Such a row would be indexed or searched without error, and
find nothing, or everything at an infinite distance.
"""

import math

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
PROBLEM = "holds NaN, infinity or numbers too large for float32 (its squared length overflows)"


def first_bad_row(rows):
    """The number of the first row of the float32 array `rows` (n, D) that Faiss cannot use (see
    above), or None. One dot product over all rows first: when that float32 sum of squares is
    finite, so is every row's (the usual case); else the rows are checked one by one, since the
    sum alone may overflow. This BLAS call costs half of isfinite and all on the caches a large
    search has swept; vdot, unlike dot and matmul, warns of no overflow."""
    if math.isfinite(np.vdot(rows, rows)):  # all rows flattened: a float32 sum of squares
        return None
    lengths = np.square(rows, dtype=np.float64).sum(axis=1)
    bad = ~(lengths <= FLOAT32_MAX)  # NaN compares false: bad too
    return int(np.argmax(bad)) if bad.any() else None
