"""Train a small byte-level BPE on the source when a recipe asks for one (``tokenizer.train``), cached by content.

The cache key is the sha256 of the training texts and the vocabulary size, so a re-run (or another recipe over
the same texts) reuses the tokenizer instead of training it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..tokenization.loading import (
    DEFAULT_SPECIAL_TOKENS,
    PORTABLE_TOKENIZER_CLASS,
    load_tokenizer,
    train_tiny_tokenizer,
)


def _texts_of(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        content = value.get("content")
        if isinstance(content, str):
            yield content
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _texts_of(v)


def training_texts(ds, columns: list[str], max_docs: int, max_chars: int, streaming: bool) -> list[str]:
    """The first documents of the source (strategy input columns), capped by count and characters. ``ds`` is the
    loaded source (a ``Dataset`` or, with ``streaming``, an ``IterableDataset``) or a list of its first rows."""
    if isinstance(ds, list):  # rows already read (the direct engine's first rows)
        rows = ds[:max_docs]
    else:
        rows = ds.take(max_docs) if streaming else ds.select(range(min(max_docs, len(ds))))
    texts: list[str] = []
    total = 0
    for row in rows:
        for c in columns:
            for t in _texts_of(row.get(c)):
                if not t:
                    continue
                t = t[: max_chars - total]
                texts.append(t)
                total += len(t)
                if total >= max_chars:
                    return texts
    return texts


def default_cache_dir() -> Path:
    return Path(os.environ.get("HFPREP_CACHE", Path.home() / ".cache" / "hfprep"))


def train_cached_tokenizer(texts: list[str], vocab: int, cache_dir: str | None) -> tuple[Any, str]:
    """Train (or reuse) a byte-level BPE keyed by the sha256 of its texts and options; returns (tokenizer, dir)."""
    if not texts:
        raise DataError("tokenizer.train: the source has no text to train a tokenizer on")
    # The saved class name is part of the key: folders cached before it was made portable are not reused.
    h = hashlib.sha256(
        json.dumps(
            {"vocab_size": vocab, "specials": list(DEFAULT_SPECIAL_TOKENS), "class": PORTABLE_TOKENIZER_CLASS}
        ).encode()
    )
    for t in texts:
        h.update(len(t).to_bytes(8, "big"))
        h.update(t.encode("utf-8", errors="surrogatepass"))
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "tokenizers"
    final = root / h.hexdigest()[:24]
    if not (final / "tokenizer.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            train_tiny_tokenizer(texts, tmp, vocab_size=vocab)
            if not final.exists():
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(str(final)), str(final)
