"""Megatron-LM / NeMo's indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``), written without megatron-core.

The format is the one megatron-core's ``megatron/core/datasets/indexed_dataset.py`` writes (``_IndexWriter``,
``IndexedDatasetBuilder``) and reads (``_IndexReader``, ``IndexedDataset(PREFIX)``), version 1, not multimodal:

* ``PREFIX.bin``: the tokens of every sequence end to end, in the index's dtype, nothing else;
* ``PREFIX.idx``, little-endian: the magic ``b"MMIDIDX\\x00\\x00"``, ``<Q`` version ``1``, ``<B`` the dtype's code
  (:data:`DTYPE_CODES`), ``<Q`` the sequence count ``n``, ``<Q`` the document count ``d`` (the length of the
  document index array), then ``n`` int32 sequence lengths, ``n`` int64 sequence pointers (byte offsets into
  ``.bin``) and ``d`` int64 document indices (``0``, then the sequence index where each document ends).

hfprep writes one sequence per document, so the document indices are ``0, 1, ..., n``, as
``tools/preprocess_data.py`` writes them without sentence splitting; the dtype is the one megatron-core picks for
the vocabulary (:func:`megatron_dtype`, ``DType.optimal_dtype``). Train on it with
``--data-path PREFIX`` (and the tokenizer the dataset was made with).

Example:
    >>> import tempfile, os
    >>> prefix = os.path.join(tempfile.mkdtemp(), "train")
    >>> _ = open(prefix + ".bin", "wb").write(np.array([5, 6, 2, 7, 2], np.uint16).tobytes())
    >>> write_index(prefix + ".idx", np.uint16, lambda: [np.array([3, 2])])
    >>> read_index(prefix + ".idx")
    (dtype('uint16'), [3, 2], [0, 6], [0, 1, 2])
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES: dict[type[np.number], int] = {
    np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8,
}
"""megatron-core's ``DType`` enum: the code the ``.idx`` header stores for each dtype."""


def megatron_dtype(vocab_size: int) -> type[np.number]:
    """The token dtype megatron-core picks for a vocabulary (``DType.optimal_dtype``): uint16 below 65,500
    entries, else int32.

    Example:
        >>> megatron_dtype(50_257).__name__, megatron_dtype(128_256).__name__
        ('uint16', 'int32')
    """
    return np.uint16 if vocab_size < 65500 else np.int32


def write_index(path: str | os.PathLike, dtype: type[np.number], lengths: Callable[[], Iterable[np.ndarray]]) -> None:
    """Write ``PREFIX.idx`` for one sequence per document. ``lengths()`` yields the documents' token counts in
    parts; it is called once per array of the index, so a caller can stream the parts from disk (bounded memory
    whatever the number of documents)."""
    count = sum(len(p) for p in lengths())
    itemsize = np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", count))
        f.write(struct.pack("<Q", count + 1))
        for part in lengths():
            f.write(np.asarray(part, dtype=np.int32).tobytes())
        pointer = 0
        for part in lengths():
            sizes = np.asarray(part, dtype=np.int64) * itemsize
            starts = np.cumsum(sizes) - sizes
            f.write((pointer + starts).tobytes())
            pointer += int(sizes.sum())
        f.write(np.arange(count + 1, dtype=np.int64).tobytes())


def read_index(path: str | os.PathLike) -> tuple[np.dtype, list[int], list[int], list[int]]:
    """``(dtype, lengths, pointers, document indices)`` of a ``.idx`` file (small files: for checks and tests)."""
    with open(path, "rb") as f:
        if f.read(9) != INDEX_MAGIC or struct.unpack("<Q", f.read(8))[0] != INDEX_VERSION:
            raise ValueError(f"{path}: not a version-1 Megatron index")
        code = struct.unpack("<B", f.read(1))[0]
        n, d = struct.unpack("<Q", f.read(8))[0], struct.unpack("<Q", f.read(8))[0]
        lengths = np.frombuffer(f.read(4 * n), dtype=np.int32)
        pointers = np.frombuffer(f.read(8 * n), dtype=np.int64)
        docs = np.frombuffer(f.read(8 * d), dtype=np.int64)
    dtype = np.dtype(next(t for t, c in DTYPE_CODES.items() if c == code))
    return dtype, lengths.tolist(), pointers.tolist(), docs.tolist()
