"""Fast, safe readers of KD caches: the seed's ``RBTopKIterableDataset`` / ``FBDataset``, and the datasets path.

The seed read each row group with ``to_pydict()`` (nested Python lists of floats) and built tensors from them:
~40k tokens/s and float64/int64 blow-up. These readers read a row group's columns as Arrow buffers, view them
as numpy arrays and hand them to ``torch.from_numpy`` without copying floats; each row is a slice (a view) of its
row group's tensor.

Work is split by *row group* across distributed ranks and DataLoader workers: unit ``u`` of the sorted
(file, row group) list goes to global worker ``u % (world_size * num_workers)``, with global worker
``rank * num_workers + worker_id``. Every sample is read exactly once per epoch. (Ranks may receive different
numbers of rows; with DDP, write shards with equal row groups or cap steps with ``max_steps``.)

Before reading anything, every file is checked: the glob matches files, Hub-layout shards have no gaps, the
required columns exist, and the cache's k, vocabulary size and tokenizer fingerprint match the student's.

Example:
    >>> ds = RBTopKIterableDataset("kd/data/train-*.parquet", student_tokenizer=tok, k=32)  # doctest: +SKIP
    >>> row = next(iter(ds))  # doctest: +SKIP
    >>> row["topk_logprobs"].shape, row["topk_logprobs"].dtype  # doctest: +SKIP
    (torch.Size([2048, 32]), torch.float16)
"""

from __future__ import annotations

import glob as _glob
import itertools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from datasets import load_dataset
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError, TokenizerError
from ..output.card import hfprep_block, split_front_matter
from ..tokenization.loading import tokenizer_fingerprint
from .format import RB_COLUMNS, bf16_bits_to_float, check_complete_shards, hidden_column, list_values_numpy, read_meta

OPTIONAL_COLUMNS = ("position_ids", "loss_mask", "target_mask")


def _is_nested_variable_list(t: pa.DataType) -> bool:
    """``list<list<X>>``: how the seed's KD writer stores top-k columns (hfprep writes fixed-size inner lists)."""
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_list(t.value_type) or pa.types.is_large_list(t.value_type)
    )


def seed_style_values(column: pa.ChunkedArray | pa.Array, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A seed-style ``list<list<X>>`` column -> ``((tokens, k) values, row offsets)``, converted (one copy).

    Every token must hold the same number of entries. float64 becomes float32 and int64 stays int64, which is
    what the seed's reader (``torch.tensor`` of the row's lists) gave.

    Example:
        >>> vals, off = seed_style_values(pa.array([[[1, 2], [3, 4]], [[5, 6]]]), "f")
        >>> vals.tolist(), off.tolist()
        ([[1, 2], [3, 4], [5, 6]], [0, 2, 3])
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.nan_to_num(lengths).astype(np.int64), out=offsets[1:])
    tokens = arr.flatten()
    widths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    if len(widths) and (np.isnan(widths.astype(np.float64)).any() or (widths != widths[0]).any()):
        raise DataError(
            f"{where}: tokens hold different numbers of top-k entries ({sorted(set(widths.tolist()))[:5]}); a KD "
            "cache needs the same k for every token -- rebuild it with `hfprep kd-cache`"
        )
    width = int(widths[0]) if len(widths) else 0
    vals = np.asarray(tokens.flatten().to_numpy(zero_copy_only=False))
    if vals.dtype == np.float64:
        vals = vals.astype(np.float32)
    return vals.reshape(-1, width) if width else vals.reshape(0, 0), offsets


def resolve_files(path_glob: str | os.PathLike | list[str]) -> list[str]:
    """Sorted files of a glob (or list), failing fast when none match or Hub-layout shards are missing."""
    if isinstance(path_glob, list | tuple):
        files = sorted(str(p) for p in path_glob)
        absent = [f for f in files if not os.path.isfile(f)]
        if absent:
            raise DataError(f"KD cache file {absent[0]!r} not found; check the paths")
    else:
        p = str(path_glob)
        if os.path.isdir(p):
            p = os.path.join(p, "data", "*.parquet")
        files = sorted(_glob.glob(p))
    if not files:
        raise DataError(
            f"no Parquet files found for {str(path_glob)!r}; check the glob (e.g. 'cache/data/train-*.parquet')"
        )
    check_complete_shards(files, source=str(path_glob))
    return files


def check_cache_meta(
    meta: dict[str, Any] | None,
    where: str,
    k: int | None = None,
    student_tokenizer=None,
    vocab_size: int | None = None,
) -> None:
    """Refuse a cache made for another k, vocabulary or tokenizer than the student's (one-line errors)."""
    if meta is None:
        return
    if k is not None and meta["k"] != k:
        raise DataError(f"{where}: cache has k={meta['k']} but k={k} was expected; rebuild the cache or change k")
    want_vocab = len(student_tokenizer) if student_tokenizer is not None else vocab_size
    if want_vocab is not None and meta["tokenizer"]["vocab_size"] != want_vocab:
        raise TokenizerError(
            f"{where}: cache was built for a vocabulary of {meta['tokenizer']['vocab_size']} ids, the student has "
            f"{want_vocab}; teacher and student must share one tokenizer"
        )
    if student_tokenizer is not None:
        fp = tokenizer_fingerprint(student_tokenizer)
        if meta["tokenizer"]["fingerprint"] != fp:
            raise TokenizerError(
                f"{where}: cache tokenizer fingerprint {meta['tokenizer']['fingerprint'][:12]}... differs from the "
                f"student tokenizer's {fp[:12]}...; ids would mean different tokens -- use the cache's tokenizer"
            )


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _tensor(values: np.ndarray) -> torch.Tensor:
    if values.dtype == np.uint32:
        # torch has few uint32 kernels (no gather/index); int64 is what embedding and gather take
        return torch.from_numpy(values.astype(np.int64))
    if values.dtype == np.uint16:
        return torch.from_numpy(values.view(np.int16))
    with warnings.catch_warnings():
        # Arrow buffers are read-only; the tensors are only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values)


class _KDParquetIterable(IterableDataset):
    """Shared machinery: file checks, row-group sharding across ranks/workers, zero-copy row-group reads."""

    required: tuple[str, ...] = ()

    def __init__(
        self,
        path_glob: str | os.PathLike | list[str],
        student_tokenizer=None,
        k: int | None = None,
        vocab_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.path_glob = path_glob
        self.k = k
        self.files = resolve_files(path_glob)
        self.rank, self.world_size = rank, world_size
        self.vocab_size = len(student_tokenizer) if student_tokenizer is not None else vocab_size
        self.units: list[tuple[str, int]] = []
        self.seed_style_noted = False
        self.meta: dict[str, Any] | None = None
        first_meta_file = None
        for f in self.files:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            missing = [c for c in self.required if c not in names]
            if missing:
                raise DataError(
                    f"KD cache file {f!r} lacks column(s) {missing} (has {names}); rebuild it with `hfprep kd-cache`"
                )
            meta = read_meta(pf.schema_arrow)
            check_cache_meta(meta, f, k=k, student_tokenizer=student_tokenizer, vocab_size=vocab_size)
            seed_style = [c for c in self.required if _is_nested_variable_list(pf.schema_arrow.field(c).type)]
            if seed_style and not self.seed_style_noted:
                self.seed_style_noted = True
                warnings.warn(
                    f"{f}: seed-style KD cache (list<list<...>> column(s) {seed_style}, no hfprep metadata): read by "
                    "converting each row group, slower than an hfprep cache (`hfprep kd-cache` writes zero-copy ones)",
                    stacklevel=3,
                )
            if meta is None and k is not None:
                width = self._topk_width(pf.schema_arrow)
                if width is not None and width != k:
                    raise DataError(f"{f}: topk columns hold {width} entries per token but k={k} was expected")
            if meta is not None:
                summary = {
                    key: meta.get(key) for key in ("k", "tokenizer", "teacher", "temperature", "config_fingerprint")
                }
                if self.meta is None:
                    self.meta, first_meta_file = summary, f
                elif summary != self.meta:
                    raise DataError(
                        f"{f} and {first_meta_file} come from different KD caches (teacher/k/tokenizer/config differ); "
                        "do not mix caches in one glob"
                    )
            self.units.extend((f, rg) for rg in range(pf.num_row_groups))
        self.columns = self._columns(pq.read_schema(self.files[0]).names)

    @staticmethod
    def _topk_width(schema: pa.Schema) -> int | None:
        if "topk_ids" not in schema.names:
            return None
        t = schema.field("topk_ids").type
        return t.value_type.list_size if pa.types.is_list(t) and pa.types.is_fixed_size_list(t.value_type) else None

    def _columns(self, names: list[str]) -> list[str]:
        return list(self.required) + [c for c in OPTIONAL_COLUMNS if c in names and c not in self.required]

    def my_units(self) -> list[tuple[str, int]]:
        """The (file, row group) units this rank and DataLoader worker reads."""
        rank, world = _world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        me, total = rank * nw + wid, world * nw
        return self.units[me::total]

    def iter_row_groups(self) -> Iterator[tuple[dict[str, torch.Tensor], np.ndarray]]:
        """``({column: flat tensor (tokens, ...)}, row offsets)`` per row group of this worker: the fastest path."""
        for f, rg in self.my_units():
            table = pq.ParquetFile(f).read_row_group(rg, columns=self.columns)
            out: dict[str, torch.Tensor] = {}
            offsets = None
            for c in self.columns:
                col = table.column(c)
                if _is_nested_variable_list(col.type):
                    vals, off = seed_style_values(col, f"{f} row group {rg} column {c!r}")
                    if c == "topk_ids" and self.k is not None and vals.shape[1] != self.k:
                        raise DataError(f"{f}: topk columns hold {vals.shape[1]} entries per token but k={self.k} was expected")
                else:
                    vals, off = list_values_numpy(col)
                offsets = off if offsets is None else offsets
                if not np.array_equal(off, offsets):
                    raise DataError(f"{f} row group {rg}: column {c!r} has other row lengths than {self.columns[0]!r}")
                if c == "topk_ids" and self.vocab_size is not None and len(vals) and int(vals.max()) >= self.vocab_size:
                    raise DataError(
                        f"{f} row group {rg}: topk id {int(vals.max())} >= student vocabulary size {self.vocab_size}; "
                        "the cache was made with another tokenizer"
                    )
                out[c] = self._convert(c, vals)
            yield out, offsets

    def _convert(self, column: str, values: np.ndarray) -> torch.Tensor:
        return _tensor(values)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for cols, offsets in self.iter_row_groups():
            bounds = offsets.tolist()
            for a, b in itertools.pairwise(bounds):
                yield {c: t[a:b] for c, t in cols.items()}


class RBTopKIterableDataset(_KDParquetIterable):
    """Response-based KD rows: ``input_ids``, ``attn_mask``, ``topk_ids`` (L, k) int64, ``topk_logprobs`` (L, k).

    Also yields ``position_ids``, ``loss_mask`` and ``target_mask`` when the cache has them (hfprep caches do);
    :class:`~hfprep.kd.collator.DataCollatorForKD` uses them to align the cache with the student's labels.
    ``student_tokenizer`` / ``k`` / ``vocab_size`` make it refuse a cache built for something else.
    """

    required = RB_COLUMNS


class FBDataset(_KDParquetIterable):
    """Feature-based KD rows: ``input_ids``, ``attn_mask`` and ``hidden_L{teacher_layer}`` (L, hidden).

    ``hidden_L{i}`` is transformers' ``hidden_states[i]`` (0 = embeddings, i = output of block i-1, the last one
    after the final norm). Caches that store bfloat16 as uint16 bits come back as ``torch.bfloat16``.
    """

    def __init__(self, path_glob: str | os.PathLike | list[str], teacher_layer: int, **kwargs: Any) -> None:
        self.teacher_layer = teacher_layer
        self.col = hidden_column(teacher_layer)
        self.required = ("input_ids", "attn_mask", self.col)
        try:
            super().__init__(path_glob, **kwargs)
        except DataError as e:
            if self.col in str(e) and "lacks column" in str(e):
                f = resolve_files(path_glob)[0]
                have = [n for n in pq.read_schema(f).names if n.startswith("hidden_L")]
                raise DataError(
                    f"KD cache {str(path_glob)!r} has no {self.col!r} (hidden-state columns: {have or 'none'}); "
                    "pick one of those layers or rebuild with hidden_layers including it"
                ) from None
            raise
        meta = read_meta(pq.read_schema(self.files[0])) or {}
        self.bf16 = meta.get("hidden_states", {}).get("dtype") == "bfloat16"

    def _convert(self, column: str, values: np.ndarray) -> torch.Tensor:
        if column == self.col and self.bf16:
            return bf16_bits_to_float(values)
        return _tensor(values)


def read_card_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``hfprep_kd`` block of a cache folder's README.md (None when absent)."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return None
    parts = split_front_matter(card.read_text())
    if parts is None:
        return None
    return hfprep_block(parts[0] or {}, key="hfprep_kd") or None  # a pushed card keeps one block per config


def load_kd_dataset(
    folder: str | os.PathLike,
    split: str = "train",
    format: str | None = "torch",
    student_tokenizer=None,
    k: int | None = None,
    **load_kwargs: Any,
):
    """The datasets-native path: ``load_dataset(folder)`` with the card's ``Array2D`` features, then a fast format.

    ``Array2D((None, k))`` columns come back as (L, k) tensors per row (uint32 as int64, as datasets does);
    ``format="arrow"`` is zero-copy if you convert batches yourself. The card's k / tokenizer are checked first.

    Example:
        >>> ds = load_kd_dataset("kd", student_tokenizer=tok)  # doctest: +SKIP
        >>> ds[0]["topk_ids"].shape  # doctest: +SKIP
        torch.Size([2048, 32])
    """
    meta = read_card_meta(folder)
    if meta is None:
        raise DataError(f"{str(folder)!r} has no README.md with an hfprep_kd block: not a hfprep KD cache folder")
    check_cache_meta(meta, str(folder), k=k, student_tokenizer=student_tokenizer)
    resolve_files(os.path.join(str(folder), "data", f"{split}-*.parquet"))
    ds = load_dataset(str(folder), split=split, **load_kwargs)
    return ds.with_format(format) if format else ds
