"""Benchmark corpora every machine can build offline, shared by the benchmark scripts.

* Real text: the Python standard library's own ``.py`` sources (one document per file, ``site-packages``
  excluded, files that are not UTF-8 skipped), repeated in a fixed order until the corpus reaches a size.
* Synthetic tokens: lognormal document lengths (median ~400 tokens, sigma 1.0 -> mean ~660) with seeded random
  ids, as flat arrays or as a tokenized ``datasets.Dataset`` (``input_ids``/``position_ids`` uint32,
  ``loss_mask`` bool).
* A benchmark tokenizer: a byte-level BPE trained locally on the start of the real corpus, cached on disk.

Example:
    >>> docs = stdlib_documents(min_bytes=1_000_000)  # doctest: +SKIP
    >>> values, offsets = lognormal_token_flat(n_docs=1000)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

MB = 1_000_000
WORK_DIR = Path(__file__).resolve().parent / "_work"


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files in a fixed (sorted) order, ``site-packages`` excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [f for f in sorted(root.rglob("*.py")) if "site-packages" not in f.parts and f.is_file()]


def stdlib_documents(min_bytes: int = 100 * MB) -> list[str]:
    """Real-text documents: stdlib sources (one per file), repeated until their UTF-8 size is >= ``min_bytes``.

    Deterministic for a given Python installation. The unique part is ~30 MB on CPython 3.11.
    """
    unique: list[str] = []
    for f in stdlib_files():
        try:
            text = f.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text:
            unique.append(text)
    sizes = [len(t.encode("utf-8")) for t in unique]
    docs: list[str] = []
    total = 0
    while total < min_bytes:
        for t, s in zip(unique, sizes):
            docs.append(t)
            total += s
            if total >= min_bytes:
                break
    return docs


def distinct_documents(min_bytes: int = 100 * MB) -> list[str]:
    """Real-text documents with no repeats: the stdlib sources, then the ``.py`` files of the running
    environment's ``site-packages`` (sorted paths), each distinct file content once, up to ``min_bytes``.

    Repetition flatters tokenizers that cache pre-tokens, so a throughput figure needs distinct text. Raises
    ``ValueError`` when the environment holds less distinct text than asked for.
    """
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    seen: set[bytes] = set()
    docs: list[str] = []
    total = 0
    for i, root in enumerate(roots):
        files = stdlib_files() if i == 0 else sorted(root.rglob("*.py"))
        for f in files:
            try:
                raw = f.read_bytes()
                text = raw.decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            digest = hashlib.sha256(raw).digest()
            if not text or digest in seen:
                continue
            seen.add(digest)
            docs.append(text)
            total += len(raw)
            if total >= min_bytes:
                return docs
    raise ValueError(f"only {total / MB:.1f} MB of distinct text found (asked for {min_bytes / MB:.1f} MB)")


def stdlib_dataset(
    min_bytes: int = 100 * MB, column: str = "text", path: str | os.PathLike | None = None, distinct: bool = False
):
    """:func:`stdlib_documents` (or, with ``distinct``, :func:`distinct_documents`) as a ``datasets.Dataset``; with
    ``path``, saved there and memory-mapped back (what a real run reads), reusing an existing copy."""
    from datasets import Dataset, load_from_disk

    if path is not None and (Path(path) / "dataset_info.json").exists():
        ds = load_from_disk(str(path))
        if column in ds.column_names:
            return ds
    docs = distinct_documents(min_bytes) if distinct else stdlib_documents(min_bytes)
    ds = Dataset.from_dict({column: docs})
    if path is None:
        return ds
    ds.save_to_disk(str(path))
    return load_from_disk(str(path))


def lognormal_lengths(n_docs: int = 200_000, median: float = 400.0, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    """Document lengths (>= 1 token) drawn from a lognormal with the given median."""
    rng = np.random.default_rng(seed)
    return np.maximum(1, rng.lognormal(np.log(median), sigma, n_docs).round()).astype(np.int64)


def lognormal_token_flat(
    n_docs: int = 200_000,
    median: float = 400.0,
    sigma: float = 1.0,
    vocab_size: int = 65_536,
    eos_id: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic tokenized documents as flat ``(values uint32, offsets int64)``; each document ends with eos.

    Ids other than the final eos are uniform in ``[1, vocab_size)``.
    """
    lengths = lognormal_lengths(n_docs, median, sigma, seed)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rng = np.random.default_rng(seed + 1)
    values = rng.integers(1, vocab_size, int(offsets[-1]), dtype=np.uint32)
    values[offsets[1:] - 1] = eos_id
    return values, offsets


def lognormal_token_dataset(n_docs: int = 200_000, median: float = 400.0, sigma: float = 1.0, seed: int = 0):
    """:func:`lognormal_token_flat` as a tokenized ``datasets.Dataset`` (pretrain rows: positions ``arange``,
    loss everywhere)."""
    import pyarrow as pa
    from datasets import Dataset, Features, List, Value

    values, offsets = lognormal_token_flat(n_docs, median, sigma, seed=seed)
    lengths = np.diff(offsets)
    positions = (np.arange(len(values), dtype=np.int64) - np.repeat(offsets[:-1], lengths)).astype(np.uint32)
    off = pa.array(offsets.astype(np.int64 if offsets[-1] >= 2**31 else np.int32))
    list_type = pa.LargeListArray if offsets[-1] >= 2**31 else pa.ListArray
    table = pa.table(
        {
            "input_ids": list_type.from_arrays(off, pa.array(values)),
            "position_ids": list_type.from_arrays(off, pa.array(positions)),
            "loss_mask": list_type.from_arrays(off, pa.array(np.ones(len(values), np.bool_))),
        }
    )
    features = Features(
        {"input_ids": List(Value("uint32")), "position_ids": List(Value("uint32")), "loss_mask": List(Value("bool"))}
    )
    return Dataset(table).cast(features)


def bench_tokenizer(vocab_size: int = 65_536, train_bytes: int = 8 * MB, cache_dir: str | os.PathLike | None = None):
    """A byte-level BPE (hfprep's special tokens, eos id 0) trained on the first ``train_bytes`` of the stdlib
    corpus; cached under ``benchmarks/_work`` by (vocab size, training bytes, corpus hash).

    Returns ``(transformers tokenizer, folder)``.
    """
    from hfprep.tokenization.loading import load_tokenizer, train_tiny_tokenizer

    docs = stdlib_documents(train_bytes)
    digest = hashlib.sha256("\0".join(docs).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    folder = Path(cache_dir or WORK_DIR) / f"tokenizer-bpe{vocab_size}-{train_bytes // MB}MB-{digest}"
    if (folder / "tokenizer.json").exists():
        return load_tokenizer(str(folder)), folder
    tmp = folder.with_name(folder.name + ".tmp")
    train_tiny_tokenizer(docs, tmp, vocab_size=vocab_size)
    tmp.rename(folder)
    return load_tokenizer(str(folder)), folder


def best_of(fn: Callable[[], object], reps: int) -> float:
    """Seconds of the fastest of ``reps`` calls of ``fn``, after one untimed warm-up call: every row of a table
    timed with it is warm (files in the page cache, imports and first-call costs paid)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)

