"""Keys for the map side: ``array_hash(input_ids) % num_reduce_chunks``."""

from __future__ import annotations

import concurrent.futures
import hashlib

import numpy as np
from jaxtyping import Int64, UInt32


def array_hash(arr: np.ndarray) -> int:
    """sha256 of ``f"{shape}-{dtype}"`` + the array bytes, as a big-endian integer (the seed's definition).

    Includes dtype and shape so distinct arrays have distinct hashes.

    Example:
        >>> import numpy as np
        >>> array_hash(np.array([1, 2], np.uint32)) % 4 == array_hash(np.array([1, 2], np.uint32)) % 4
        True
    """
    arr_bytes = arr.tobytes()
    meta = f"{arr.shape}-{arr.dtype}".encode()
    digest = hashlib.sha256(meta + arr_bytes).digest()
    return int.from_bytes(digest, byteorder="big")


def batch_keys(
    values: UInt32[np.ndarray, " total"], offsets: Int64[np.ndarray, " n_plus_1"], num_reduce_chunks: int
) -> Int64[np.ndarray, " n"]:
    """``array_hash(doc) % num_reduce_chunks`` for every document of a flat uint32 batch.

    Equal to calling :func:`array_hash` on each ``values[offsets[i]:offsets[i+1]]`` (a uint32 array), without
    building per-document arrays: the prefix and the bytes are hashed straight from one buffer. A large batch is
    hashed by two threads, each over half of its bytes (sha256 releases the GIL on large buffers).

    Example:
        >>> v = np.array([1, 2, 3], np.uint32)
        >>> batch_keys(v, np.array([0, 2, 3]), 8).tolist() == [array_hash(v[:2]) % 8, array_hash(v[2:]) % 8]
        True
    """
    values = np.ascontiguousarray(values, dtype=np.uint32)
    offsets = np.asarray(offsets, dtype=np.int64)
    out = np.empty(len(offsets) - 1, dtype=np.int64)
    if len(out) < 2 or int(offsets[-1] - offsets[0]) * 4 < PARALLEL_HASH_BYTES:
        _hash_range(values, offsets, num_reduce_chunks, out, 0, len(out))
        return out
    mid = int(np.searchsorted(offsets, (offsets[0] + offsets[-1]) // 2))
    mid = min(max(mid, 1), len(out) - 1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        other = pool.submit(_hash_range, values, offsets, num_reduce_chunks, out, mid, len(out))
        _hash_range(values, offsets, num_reduce_chunks, out, 0, mid)
        other.result()
    return out


PARALLEL_HASH_BYTES = 8 * 2**20
"""Bytes of ids from which :func:`batch_keys` hashes with two threads."""


def _hash_range(values: np.ndarray, offsets: np.ndarray, num_reduce_chunks: int, out: np.ndarray, lo: int, hi: int) -> None:
    buf = memoryview(values).cast("B")
    sha = hashlib.sha256
    starts = (offsets[lo:hi] * 4).tolist()
    lengths = np.diff(offsets[lo : hi + 1]).tolist()
    for i, a, n in zip(range(lo, hi), starts, lengths, strict=True):
        h = sha(f"({n},)-uint32".encode())
        h.update(buf[a : a + 4 * n])
        out[i] = int.from_bytes(h.digest(), "big") % num_reduce_chunks
