"""Tokenizer backends: map a batch of strings to flat token arrays.

A backend only encodes (no special tokens added, exactly like ``tokenizer.encode(text, add_special_tokens=False)``);
the strategies in :mod:`hfprep.tokenize` own everything else. Output is the Arrow-style pair
``(values: uint32[total], offsets: int64[n + 1])`` so nothing downstream builds per-row Python lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Protocol

import numpy as np
from jaxtyping import Int64, UInt32

from .tokenizer import backend_tokenizer


class TokenizerBackend(Protocol):
    """What a strategy needs from a tokenizer backend."""

    name: str

    def encode_batch(self, texts: Sequence[str]) -> tuple[UInt32[np.ndarray, " total"], Int64[np.ndarray, " n_plus_1"]]:
        """Encode ``texts`` without adding special tokens; return flat ids and offsets."""
        ...


def lists_to_flat(lists: Sequence[Sequence[int]]) -> tuple[UInt32[np.ndarray, " total"], Int64[np.ndarray, " n_plus_1"]]:
    """Flatten a list of id lists into ``(values, offsets)`` with one C-level pass."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(chain.from_iterable(lists), dtype=np.uint32, count=int(offsets[-1]))
    return values, offsets


class HFBackend:
    """The Rust ``tokenizers`` library through ``encode_batch_fast`` (no offsets or strings built).

    Example:
        >>> backend = HFBackend(tokenizer)  # doctest: +SKIP
        >>> values, offsets = backend.encode_batch(["a b", "c"])  # doctest: +SKIP
    """

    name = "hf"

    def __init__(self, tokenizer) -> None:
        self._tok = backend_tokenizer(tokenizer)

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64)
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return lists_to_flat([e.ids for e in encodings])


def get_backend(tokenizer, backend: str = "hf") -> TokenizerBackend:
    """Return the backend named ``backend`` for ``tokenizer`` (``"hf"``; faster ones register here)."""
    if backend == "hf":
        return HFBackend(tokenizer)
    from .errors import ConfigError

    raise ConfigError(f"unknown tokenizer backend {backend!r}; choose one of: 'hf'")
