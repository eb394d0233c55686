"""Check, before the first training step, that prepared data fits the model it is about to train.

A token id at or above the model's vocabulary size fails deep inside the model, after data loading and model
set-up: ``IndexError: index out of range in self`` in the embedding on CPU, a device-side assert on CUDA (which
leaves the CUDA context unusable). It happens when data prepared with one tokenizer meets a model made for another.
Two checks turn that into one line that names the offending row, the data's largest id and the model's vocabulary:

* :func:`check_dataset_for_model` scans a whole dataset before training: the largest ``input_ids`` value against
  the model's embedding table (``model.get_input_embeddings().num_embeddings``, else ``config.vocab_size``), and,
  given a tokenizer, the dataset card's tokenizer fingerprint against that tokenizer's
  (:func:`hfprep.tokenization.loading.tokenizer_fingerprint`, the function the card was written with). For a KD
  cache it also checks that the teacher's vocabulary (the card's) fits the student. With ``transformers.Trainer``,
  :class:`hfprep.train.callbacks.ModelCheckCallback` runs it in ``on_train_begin``, before step one.
* :func:`check_batch_ids` checks one collated batch (vectorised, one ``max`` over the ``(B, L)`` array the
  collator already built): ``DataCollatorForPackedLM(vocab_size=...)`` and ``DataCollatorForKD(vocab_size=...)``
  call it on every batch, which also covers streaming data that cannot be scanned ahead.

Cost (``benchmarks/bench_model_check.py``, 50M ids in rows of 2048, 2 shared cores): the scan reads only the
``input_ids`` column and takes one ``min``/``max`` per batch of rows: a folder's Parquet shards 0.5 s (about what
pyarrow needs to read that column at all, 0.66 s), a ``datasets.Dataset`` (memory-mapped Arrow, zero-copy) 0.01 s.
The per-batch check adds ~0.01 ms to a 0.25 ms collation of 8 x 2048.

Example:
    >>> import numpy as np
    >>> check_batch_ids(np.array([[1, 2, 3]]), vocab_size=4)
    >>> check_batch_ids(np.array([[1, 2], [9, 3]]), vocab_size=4)
    Traceback (most recent call last):
    ...
    hfprep.errors.DataError: batch row 1, token 0: input_ids holds id 9 (the largest id in this batch is 9), but the model's vocabulary has 4 ids (0..3); the data was tokenized for another vocabulary: train the model it was prepared for (its card names the tokenizer), or prepare it again with this model's tokenizer
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ConfigError, DataError, TokenizerError
from ..output.card import read_card_metadata
from ..output.layout import CARD_NAME, DATA_DIR, list_split_files
from ..tokenization.loading import tokenizer_fingerprint

ID_COLUMN = "input_ids"
SCAN_BATCH_ROWS = 4096
"""Rows per scanned batch: large enough that the per-batch overhead vanishes, small enough to stay in cache-sized
memory for long rows."""
CARD_BLOCKS = ("hfprep", "hfprep_kd")
"""The card's YAML blocks that record the tokenizer (a prepared dataset's, a KD cache's)."""
FIX = (
    "the data was tokenized for another vocabulary: train the model it was prepared for (its card names the "
    "tokenizer), or prepare it again with this model's tokenizer"
)


def model_vocab_size(model: Any) -> int:
    """How many token ids ``model`` can embed: its input embedding table's rows (what an id must stay below),
    else ``config.vocab_size``; a ``PretrainedConfig`` gives its ``vocab_size``; an int is taken as is.

    Example:
        >>> from types import SimpleNamespace
        >>> model_vocab_size(SimpleNamespace(vocab_size=1000)), model_vocab_size(32)
        (1000, 32)
    """
    if isinstance(model, int) and not isinstance(model, bool):
        return model
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if callable(get_embeddings):
        embeddings = get_embeddings()
        rows = getattr(embeddings, "num_embeddings", None)
        if isinstance(rows, int):
            return rows
    for holder in (getattr(model, "config", None), model):
        size = getattr(holder, "vocab_size", None)
        if isinstance(size, int) and not isinstance(size, bool):
            return size
    raise ConfigError(
        f"cannot tell the vocabulary size of {type(model).__name__}: pass a transformers model, its config, or the "
        "number of ids its embedding table holds"
    )


def check_vocab_size_arg(vocab_size: int | None) -> None:
    """A collator's ``vocab_size`` argument: None (no check) or a positive int, else a one-line ConfigError."""
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise ConfigError(
            "vocab_size must be a positive integer, the model's (model.get_input_embeddings().num_embeddings), "
            f"got {vocab_size!r}"
        )


def check_batch_ids(ids: Any, vocab_size: int, column: str = ID_COLUMN) -> None:
    """Raise a one-line :class:`~hfprep.errors.DataError` when a collated batch holds an id outside
    ``0..vocab_size-1``, naming the batch row, the token, the batch's largest id and the vocabulary size.

    ``ids`` is a numpy array or a CPU torch tensor of shape ``(B, L)`` or ``(B, L, k)`` (a KD batch's top-k ids).
    The common case costs one ``min`` and one ``max``.
    """
    arr = ids.numpy() if hasattr(ids, "numpy") else np.asarray(ids)
    if arr.size == 0:
        return
    low, high = int(arr.min()), int(arr.max())
    if low >= 0 and high < vocab_size:
        return
    where = tuple(int(i) for i in np.argwhere((arr < 0) | (arr >= vocab_size))[0])
    bad = int(arr[where])
    loc = f"batch row {where[0]}, token {where[1]}" + (f", top-k entry {where[2]}" if len(where) > 2 else "")
    raise DataError(
        f"{loc}: {column} holds id {bad} (the largest id in this batch is {high}), but the model's vocabulary has "
        f"{vocab_size} ids (0..{vocab_size - 1}); {FIX}"
    )


@dataclass(frozen=True)
class ModelCheck:
    """What :func:`check_dataset_for_model` found: the model's vocabulary size, the data's largest token id (-1
    when it holds no token), how many rows and tokens it scanned, and the card's tokenizer fingerprint when a
    tokenizer was compared with it."""

    vocab_size: int
    max_id: int
    rows: int
    tokens: int
    fingerprint: str | None = None


@dataclass
class _Scan:
    """Running state of an id scan: the largest id so far and the first row holding an id out of range."""

    vocab_size: int
    max_id: int = -1
    rows: int = 0
    tokens: int = 0
    first_bad: tuple[str, int, int] | None = None  # (part, row, id)

    def add(self, part: str, row_base: int, column: pa.ChunkedArray | pa.Array) -> None:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        for chunk in chunks:
            values = pc.list_flatten(chunk)
            self.rows += len(chunk)
            self.tokens += len(values)
            if len(values):
                lo_hi = pc.min_max(values)
                low, high = lo_hi["min"].as_py(), lo_hi["max"].as_py()
                self.max_id = max(self.max_id, high)
                if self.first_bad is None and (low < 0 or high >= self.vocab_size):
                    row, bad = self._locate(chunk, values)
                    self.first_bad = (part, row_base + row, bad)
            row_base += len(chunk)

    def _locate(self, chunk: pa.Array, values: pa.Array) -> tuple[int, int]:
        """(row inside ``chunk``, id) of the first out-of-range id (only on the error path)."""
        flat = values.to_numpy(zero_copy_only=False)
        first = int(np.flatnonzero((flat < 0) | (flat >= self.vocab_size))[0])
        lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False)
        row = int(np.searchsorted(np.cumsum(lengths), first, side="right"))
        return row, int(flat[first])


def _card_block(metadata: dict[str, Any]) -> dict[str, Any] | None:
    for key in CARD_BLOCKS:
        block = metadata.get(key)
        if isinstance(block, dict):
            return {**block, "kind": key}
    return None


def _read_card(card: str | os.PathLike) -> tuple[str, dict[str, Any] | None]:
    """``(card path, hfprep block or None)`` of a dataset folder or a README.md path."""
    path = Path(card)
    if path.is_dir():
        path = path / CARD_NAME
    if not path.is_file():
        return str(path), None
    try:
        return str(path), _card_block(read_card_metadata(path))
    except ValueError as e:
        raise DataError(f"{path}: {e}; the dataset card is damaged (re-create the folder with hfprep)") from None


def _folder_batches(folder: Path) -> Iterator[tuple[str, pa.ChunkedArray | pa.Array]]:
    shards = list_split_files(folder)
    if not shards:
        raise DataError(
            f"{folder}: no Parquet shards under {DATA_DIR}/ (expected {DATA_DIR}/<split>-XXXXX-of-YYYYY.parquet); give "
            "the folder `hfprep run` or `hfprep kd-cache` wrote"
        )
    for split, rels in shards.items():
        for rel in rels:
            pf = pq.ParquetFile(folder / rel)
            if ID_COLUMN not in pf.schema_arrow.names:
                raise DataError(f"{folder / rel}: no {ID_COLUMN!r} column (has {pf.schema_arrow.names})")
            for batch in pf.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=[ID_COLUMN]):
                yield f"split {split!r}", batch.column(0)


def _dataset_batches(ds: Any, split: str | None) -> Iterator[tuple[str, pa.ChunkedArray | pa.Array]]:
    if ID_COLUMN not in ds.column_names:
        raise DataError(f"the dataset has no {ID_COLUMN!r} column (columns: {ds.column_names})")
    for table in ds.select_columns([ID_COLUMN]).with_format("arrow").iter(batch_size=SCAN_BATCH_ROWS):
        yield f"split {split!r}" if split else "", table.column(ID_COLUMN)


def _files_batches(files: Iterable[str]) -> Iterator[tuple[str, pa.ChunkedArray | pa.Array]]:
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=SCAN_BATCH_ROWS, columns=[ID_COLUMN]):
            yield str(f), batch.column(0)


def _sources(data: Any, card: str | os.PathLike | None) -> tuple[str, Iterator[tuple[str, Any]], tuple[str, Any]]:
    """``(what the data is called in messages, its ``(part, id column)`` batches in row order, (card path, card
    block))``; a part is a split (``"split 'train'"``), a KD reader's file, or ``""`` for a Dataset without a split."""
    if isinstance(data, str | os.PathLike):
        folder = Path(data)
        if not folder.is_dir():
            raise ConfigError(f"{str(data)!r} is not a folder; give the folder `hfprep run` wrote, or a Dataset")
        return str(folder), _folder_batches(folder), _read_card(card if card is not None else folder)
    card_info = _read_card(card) if card is not None else ("", None)
    if isinstance(data, datasets.Dataset):
        return "the dataset", _dataset_batches(data, str(data.split) if data.split else None), card_info
    if isinstance(data, datasets.DatasetDict):
        batches = (b for split, ds in data.items() for b in _dataset_batches(ds, split))
        return "the dataset", batches, card_info
    files = getattr(data, "files", None)
    if isinstance(files, list) and files and all(str(f).endswith(".parquet") for f in files):
        # hfprep's KD readers (RBTopKIterableDataset, FBDataset): their shards, and the cache metadata they read.
        meta = getattr(data, "meta", None)
        block = {**meta, "kind": "hfprep_kd"} if isinstance(meta, dict) and card is None else card_info[1]
        return "the KD cache", _files_batches(files), (card_info[0] or str(files[0]), block)
    if isinstance(data, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise ConfigError(
            "a streaming dataset cannot be scanned before training: pass the prepared folder (its shards are read), "
            "or let DataCollatorForPackedLM(vocab_size=...) check every batch"
        )
    raise ConfigError(
        f"cannot scan {type(data).__name__} for token ids: pass the folder hfprep wrote, a datasets.Dataset / "
        "DatasetDict, or an hfprep KD reader"
    )


def check_dataset_for_model(
    data: Any, model: Any, tokenizer: Any = None, *, card: str | os.PathLike | None = None
) -> ModelCheck:
    """Refuse, in one line, data that does not fit ``model``, before any training step.

    Args:
        data: the folder ``hfprep run`` / ``hfprep kd-cache`` wrote (its ``data/`` shards and ``README.md``), a
            ``datasets.Dataset`` / ``DatasetDict`` of prepared rows, or an hfprep KD reader.
        model: a transformers model (its input embedding table's size), its config (``vocab_size``) or an int.
        tokenizer: optional; its :func:`~hfprep.tokenization.loading.tokenizer_fingerprint` must equal the one the
            dataset card records (the tokenizer the data was made with). Needs a card: ``data`` as a folder, or
            ``card=`` (the folder or its ``README.md``) for a ``Dataset``.
        card: where the dataset card is when ``data`` is not the folder itself.

    Raises :class:`~hfprep.errors.TokenizerError` when the fingerprints differ and
    :class:`~hfprep.errors.DataError` when a token id is outside ``0..vocab_size-1`` (naming the split and row,
    the data's largest id and the model's vocabulary size) or a KD cache's teacher vocabulary is larger than the
    model's; returns a :class:`ModelCheck` otherwise.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]})
        >>> check_dataset_for_model(ds, 8)
        ModelCheck(vocab_size=8, max_id=5, rows=2, tokens=5, fingerprint=None)
        >>> check_dataset_for_model(ds, 5)
        Traceback (most recent call last):
        ...
        hfprep.errors.DataError: the dataset: row 1 holds token id 5, the largest id in the data is 5, but the model's vocabulary has 5 ids (0..4); the data was tokenized for another vocabulary: train the model it was prepared for (its card names the tokenizer), or prepare it again with this model's tokenizer
    """
    vocab = model_vocab_size(model)
    name, batches, (card_path, block) = _sources(data, card)
    fingerprint = None
    if tokenizer is not None:
        recorded = ((block or {}).get("tokenizer") or {}).get("fingerprint")
        if not recorded:
            raise ConfigError(
                f"cannot compare the tokenizer with {name}: no dataset card with an hfprep tokenizer fingerprint "
                f"({card_path or 'none given'}); pass card=<the prepared folder> (or leave tokenizer out)"
            )
        mine = tokenizer_fingerprint(tokenizer)
        if mine != recorded:
            made_with = ((block or {}).get("tokenizer") or {}).get("name_or_path")
            raise TokenizerError(
                f"{card_path}: the data was tokenized with tokenizer {recorded[:12]}..."
                + (f" ({made_with})" if made_with else "")
                + f", the given tokenizer is {mine[:12]}... (sha256 of tokenizer.json): the same id means another "
                "token; train with the tokenizer the card names, or prepare the data again with this one"
            )
        fingerprint = recorded
    card_vocab = ((block or {}).get("tokenizer") or {}).get("vocab_size")
    if (block or {}).get("kind") == "hfprep_kd" and isinstance(card_vocab, int) and card_vocab > vocab:
        raise DataError(
            f"{card_path}: the teacher's top-k ids range over the cache's {card_vocab:,}-id vocabulary, but the "
            f"model's has {vocab:,} ids; distil into a student that uses the cache's tokenizer"
        )
    scan = _Scan(vocab)
    row_base: dict[str, int] = {}  # rows are numbered per split (per file for a KD reader), as readers number them
    for part, column in batches:
        base = row_base.get(part, 0)
        scan.add(part, base, column)
        row_base[part] = base + len(column)
    if scan.first_bad is not None:
        part, row, bad = scan.first_bad
        note = f" (its card records a {card_vocab:,}-id tokenizer)" if isinstance(card_vocab, int) else ""
        raise DataError(
            f"{name}: {part + ' ' if part else ''}row {row} holds token id {bad}, the largest id in the data is {scan.max_id}"
            f"{note}, but the model's vocabulary has {vocab} ids (0..{vocab - 1}); {FIX}"
        )
    return ModelCheck(vocab, scan.max_id, scan.rows, scan.tokens, fingerprint)
