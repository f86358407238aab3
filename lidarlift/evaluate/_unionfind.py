"""Union-find over point indices (numba), for connected components of very large neighbour graphs."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def union_pairs(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Join the sets of ``a[k]`` and ``b[k]`` for every k; the smaller root becomes the parent."""
    for k in range(a.size):
        ra = _find(parent, a[k])
        rb = _find(parent, b[k])
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb


@numba.njit(cache=True, nogil=True)
def find_all(parent: np.ndarray) -> np.ndarray:
    """(N,) the root of every element (each set's smallest index)."""
    out = np.empty(parent.size, np.int64)
    for i in range(parent.size):
        out[i] = _find(parent, i)
    return out
