"""Map-side keys: ``batch_keys`` is the seed's ``array_hash(doc) % num_reduce_chunks`` for every document, on the one
thread and the two-thread path alike; the reference here is hashlib over each document's own array."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from hfprep.pack.keys import PARALLEL_HASH_BYTES, batch_keys


def reference_key(doc: np.ndarray, chunks: int) -> int:
    arr = np.asarray(doc, dtype=np.uint32)
    digest = hashlib.sha256(f"{arr.shape}-{arr.dtype}".encode() + arr.tobytes()).digest()
    return int.from_bytes(digest, "big") % chunks


@pytest.mark.parametrize("big", [False, True])
def test_batch_keys_are_the_seed_hash_of_every_document(big):
    rng = np.random.default_rng(int(big))
    mean = (2 * PARALLEL_HASH_BYTES // 4) // 40 if big else 20  # big: two threads share the batch
    lengths = rng.integers(0, 2 * mean, 41)
    lengths[[3, 17]] = 0  # empty documents hash their prefix alone
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, 2**17, int(offsets[-1])).astype(np.uint32)
    assert (int(offsets[-1]) * 4 >= PARALLEL_HASH_BYTES) == big
    keys = batch_keys(values, offsets, 64)
    assert keys.tolist() == [reference_key(values[a:b], 64) for a, b in itertools.pairwise(offsets)]


def test_batch_keys_of_a_window_that_does_not_start_at_zero():
    values = np.arange(100, dtype=np.uint32)
    offsets = np.array([10, 30, 31, 90])
    assert batch_keys(values, offsets, 7).tolist() == [reference_key(values[a:b], 7) for a, b in ((10, 30), (30, 31), (31, 90))]
