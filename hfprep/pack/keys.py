"""Keys for the map side: ``array_hash(input_ids) % num_reduce_chunks``."""

from __future__ import annotations

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
    building per-document arrays: the prefix and the bytes are hashed straight from one buffer.
    """
    values = np.ascontiguousarray(values, dtype=np.uint32)
    buf = memoryview(values).cast("B")
    lens = np.diff(offsets)
    out = np.empty(len(lens), dtype=np.int64)
    sha = hashlib.sha256
    for i, (a, n) in enumerate(zip((offsets[:-1] * 4).tolist(), lens.tolist())):
        h = sha(f"({n},)-uint32".encode())
        h.update(buf[a : a + 4 * n])
        out[i] = int.from_bytes(h.digest(), "big") % num_reduce_chunks
    return out
