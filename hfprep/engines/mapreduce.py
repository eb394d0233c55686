"""Map-reduce on ``datasets``: the seed's framework, datasets-native.

* **map**: a batched ``Dataset.map`` (``num_proc`` workers) that emits rows with a ``__key__`` column (and the
  input row index ``__index__``, so engines that do not keep order can restore it).
* **group**: one stable Arrow sort of the key column (a few bytes per row), then key boundaries.
* **reduce**: contiguous key ranges, sized by a memory budget, become the rows of a small *task* dataset; its
  batched ``map`` (``num_proc`` workers) gathers each range with one Arrow ``take`` and calls the reducer once per
  key with that key's rows in input order, keys ascending.

The cost of grouping is one pass over the data whatever the number of keys: the number of gathers depends on
bytes (``reduce_memory_budget``), not on keys.

Example (the seed's letter count):
    >>> class Cfg(MapReduceTransformConfigBase):
    ...     column: str
    >>> def map_fn(row):
    ...     for ch in row["content"]:
    ...         yield ch, {"cnt": 1}
    >>> def reduce_fn(key, rows):
    ...     yield {"letter": key, "cnt": sum(r["cnt"] for r in rows)}
    >>> MapReduceTransformBase(map_fn, reduce_fn, Cfg(column="content")).run([{"content": "aba"}])
    [{'letter': 'a', 'cnt': 2}, {'letter': 'b', 'cnt': 1}]
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydantic
from datasets import Dataset, DatasetInfo, concatenate_datasets
from datasets.fingerprint import get_temporary_cache_files_directory

from .. import scratch
from ..datasets_internals import arrow_table, fingerprint
from ..errors import ConfigError, DataError
from ..schema import Row, values_to_numpy
from ..tokenization.backends import sample_rows, sample_texts

Key = TypeVar("Key")
KEY_COLUMN = "__key__"
INDEX_COLUMN = "__index__"
DEFAULT_REDUCE_MEMORY_BUDGET = 512 * 2**20
BYTES_PER_TOKEN_IN_GROUP = 9  # uint32 id + uint32 position + bool mask, in memory while a group is packed


class TransformConfigBase(pydantic.BaseModel):
    """Base of every transform config: unknown keys are errors."""

    model_config = pydantic.ConfigDict(extra="forbid")


class MapTransformConfigBase(TransformConfigBase):
    """Config of a map-only transform."""


class MapReduceTransformConfigBase(TransformConfigBase):
    """Config of a map-reduce transform."""


def to_dataset(data: Any):
    """Accept a ``datasets.Dataset`` or an iterable of row dicts (the seed's input)."""
    if isinstance(data, Dataset):
        return data
    rows = list(data)
    if not rows:
        return Dataset.from_dict({})
    if not all(isinstance(r, Mapping) for r in rows):
        bad = next(i for i, r in enumerate(rows) if not isinstance(r, Mapping))
        raise DataError(f"row {bad}: expected a dict, got {type(rows[bad]).__name__}")
    return Dataset.from_list([dict(r) for r in rows])


def rows_to_columns(rows: list[Row], columns: Iterable[str] | None = None) -> dict[str, list[Any]]:
    """Row dicts -> column dict (columns in first-seen order)."""
    names: dict[str, None] = dict.fromkeys(columns or [])
    for r in rows:
        names.update(dict.fromkeys(r))
    return {c: [r.get(c) for r in rows] for c in names}


class TransformBase:
    """A transform over a table. ``run`` takes a ``Dataset`` (or a list of dicts) and returns the same kind."""

    config: TransformConfigBase
    progress_split: str | None = None
    """The split being processed, named in progress bars (set by whoever runs the transform per split)."""

    def progress_label(self, stage: str) -> str:
        """What the progress bar of ``stage`` (``map`` or ``reduce``) says: the stage and, when known, the split.
        Subclasses name their stages the way their users think of them (``tokenize train``, ``pack train``)."""
        label = f"{stage} {type(self).__name__}"
        return f"{label} {self.progress_split}" if self.progress_split else label

    def run(self, data: Any, num_proc: int | None = None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _wrap_output(data: Any, out):
        return out if isinstance(data, Dataset) else out.to_list()


class MapTransformBase(TransformBase):
    """A map: ``map_fn(row)`` yields zero or more rows. Subclasses may override :meth:`map_batch` for speed."""

    def __init__(self, map_fn: Callable[[Row], Iterator[Row]], config: MapTransformConfigBase) -> None:
        self._map_fn = map_fn
        self.config = config

    def map_batch(self, batch: Mapping[str, list[Any]], indices: list[int]) -> dict[str, list[Any]] | pa.Table:
        n = len(indices)
        rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        return rows_to_columns([out for row in rows for out in self._map_fn(row)])

    def run(self, data: Any, num_proc: int | None = None, batch_size: int = 1000) -> Any:
        ds = to_dataset(data)
        if len(ds) == 0:
            return self._wrap_output(data, ds)
        out = ds.map(
            self.map_batch,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            remove_columns=ds.column_names,
            num_proc=num_proc,
            desc=self.progress_label("map"),
        )
        return self._wrap_output(data, out)


def plan_reduce_ranges(group_bytes: np.ndarray, budget: int, min_ranges: int = 1) -> list[tuple[int, int]]:
    """Split groups ``0..n`` into contiguous ranges of at most ``budget`` bytes (a bigger group is alone), of
    nearly equal size, their number a multiple of ``min_ranges`` (the workers) while there are enough groups.

    datasets hands each of ``num_proc`` workers a contiguous share of the ranges, so equal ranges in a multiple
    of the workers keep them all busy to the end: filling ranges up to the budget left one worker with two full
    ranges and the other with a remainder (a 1M-document run waited 26 s on one worker while the other idled).

    Example:
        >>> plan_reduce_ranges(np.array([4, 4, 4, 4, 4, 4]), budget=16, min_ranges=2)
        [(0, 3), (3, 6)]
        >>> plan_reduce_ranges(np.array([4, 4, 4, 4, 4, 4, 4, 4]), budget=10, min_ranges=2)  # 3 would do: 4
        [(0, 2), (2, 4), (4, 6), (6, 8)]
    """
    n = len(group_bytes)
    if n == 0:
        return []
    sizes = np.asarray(group_bytes, dtype=np.float64)
    workers = max(1, min(min_ranges, n))
    count = len(_fill_ranges(sizes, budget))  # the fewest ranges the budget allows
    count = min(n, -(-count // workers) * workers)
    while True:
        ranges = _even_ranges(sizes, count)
        if count >= n or all(hi - lo == 1 or sizes[lo:hi].sum() <= budget for lo, hi in ranges):
            return ranges
        count = min(n, count + workers)


def _fill_ranges(sizes: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Ranges filled up to ``budget`` in order (a bigger group alone)."""
    ranges, lo, acc = [], 0, 0.0
    for g, b in enumerate(sizes.tolist()):
        if g > lo and acc + b > budget:
            ranges.append((lo, g))
            lo, acc = g, 0.0
        acc += b
    ranges.append((lo, len(sizes)))
    return ranges


def _even_ranges(sizes: np.ndarray, count: int) -> list[tuple[int, int]]:
    """At most ``count`` contiguous ranges, cut at the group boundaries nearest to equal shares of the bytes."""
    n = len(sizes)
    ends = np.cumsum(sizes)
    cuts = []
    for target in ends[-1] * np.arange(1, count) / count:
        g = int(np.searchsorted(ends, target))  # the group whose end reaches the target
        before = ends[g - 1] if g else 0.0  # cutting before group g, or after it: the nearer boundary wins
        cut = g if target - before <= ends[min(g, n - 1)] - target else g + 1
        lo = cuts[-1] if cuts else 0
        cut = min(max(cut, lo + 1), n - 1)
        if lo < cut:
            cuts.append(cut)
    bounds = [0, *cuts, n]
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def gather_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` for ascending ``rows`` of a many-chunk (memory-mapped) table, as one contiguous table.

    One ``take`` per record batch that holds any of the rows: Arrow's take on a chunked list column can
    concatenate every chunk of the column first, i.e. copy the whole dataset for each range.
    """
    batches = table.to_batches()
    if not batches:
        return table.slice(0, 0)
    ends = np.cumsum([b.num_rows for b in batches])
    starts = ends - np.array([b.num_rows for b in batches])
    cuts = np.searchsorted(rows, np.concatenate([starts, ends[-1:]]))
    parts = [
        batches[i].take(pa.array(rows[cuts[i] : cuts[i + 1]] - starts[i]))
        for i in range(len(batches))
        if cuts[i + 1] > cuts[i]
    ]
    if not parts:
        return table.schema.empty_table()
    return pa.Table.from_batches(parts, schema=table.schema).combine_chunks()


def _numpy_gatherable(field: pa.Field) -> bool:
    """A column :class:`RowGather` copies with numpy: fixed-width (or bool) values, or lists of them."""
    t = field.type.value_type if pa.types.is_list(field.type) else field.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


class RowGather:
    """The rows ``rows`` (any order) of a many-chunk table, copied once with numpy straight into their places;
    :meth:`table` then cuts contiguous runs of them into zero-offset Arrow tables without another copy.

    The reduce side gathers a whole key range in key-major order this way: Arrow's ``take`` on list columns is
    several times slower than a numpy gather, and the old way (take in file order, then one more take per group)
    copied every token twice. Only for columns :func:`_numpy_gatherable` accepts, without nulls (see
    :meth:`supports`).

    Example:
        >>> t = pa.table({"ids": pa.array([[1, 2], [3], [4, 5, 6]], pa.list_(pa.uint32())), "i": [10, 11, 12]})
        >>> g = RowGather(t, np.array([2, 0]))
        >>> g.table(0, 2).to_pydict()
        {'ids': [[4, 5, 6], [1, 2]], 'i': [12, 10]}
    """

    def __init__(self, table: pa.Table, rows: np.ndarray) -> None:
        self.schema = table.schema
        batches = table.to_batches()
        rows = np.asarray(rows, dtype=np.int64)
        sizes = np.array([b.num_rows for b in batches], dtype=np.int64)
        ends = np.cumsum(sizes)
        chunk = np.searchsorted(ends, rows, side="right")
        local = rows - (ends - sizes)[chunk]
        by_chunk = np.argsort(chunk, kind="stable")
        bounds = np.searchsorted(chunk[by_chunk], np.arange(len(batches) + 1))
        picks = [(c, by_chunk[bounds[c] : bounds[c + 1]]) for c in range(len(batches)) if bounds[c + 1] > bounds[c]]
        self.columns: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
        for j, field in enumerate(self.schema):
            self.columns[field.name] = self._gather(field, [(batches[c].column(j), out, local[out]) for c, out in picks],
                                                    len(rows))

    @staticmethod
    def supports(table: pa.Table) -> bool:
        """True when every column can be gathered with numpy (and none holds a null)."""
        for field, col in zip(table.schema, table.columns):
            if not _numpy_gatherable(field) or col.null_count:
                return False
            if pa.types.is_list(field.type) and any(c.values.null_count for c in col.chunks):
                return False
        return True

    @staticmethod
    def _gather(field: pa.Field, parts, n: int) -> tuple[np.ndarray | None, np.ndarray]:
        if not pa.types.is_list(field.type):
            dtype = field.type.to_pandas_dtype()
            values = np.empty(n, dtype=dtype)
            for arr, out, local in parts:
                values[out] = arr.to_numpy(zero_copy_only=False)[local]
            return None, values
        lengths = np.zeros(n, dtype=np.int64)
        begin = np.zeros(n, dtype=np.int64)
        source = np.zeros(n, dtype=np.int64)
        children = []
        for k, (arr, out, local) in enumerate(parts):
            offsets = arr.offsets.to_numpy()  # absolute positions in arr.values (a sliced array keeps its offset)
            begin[out] = offsets[local]
            lengths[out] = offsets[local + 1] - offsets[local]
            source[out] = k
            children.append(values_to_numpy(arr.values))
        row_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=row_offsets[1:])
        dtype = field.type.value_type.to_pandas_dtype()
        if not n:
            return row_offsets, np.zeros(0, dtype=dtype)
        # One slice per run of rows that follow each other in the same source chunk, joined by one concatenate:
        # a memcpy per run instead of an int64 index per token (which cost more than the copy itself).
        end = begin + lengths
        run = np.flatnonzero(np.concatenate([[True], (source[1:] != source[:-1]) | (begin[1:] != end[:-1])]))
        run_end = np.append(run[1:], n) - 1
        views = [
            children[c][b:e]
            for c, b, e in zip(source[run].tolist(), begin[run].tolist(), end[run_end].tolist(), strict=True)
        ]
        return row_offsets, np.concatenate(views).astype(dtype, copy=False)

    def table(self, start: int, stop: int) -> pa.Table:
        """Rows ``start:stop`` of the gathered order as a table of zero-offset arrays (no copy of list values)."""
        arrays = []
        for field in self.schema:
            offsets, values = self.columns[field.name]
            if offsets is None:
                arrays.append(pa.array(values[start:stop], type=field.type))
                continue
            lo, hi = int(offsets[start]), int(offsets[stop])
            arrays.append(
                pa.ListArray.from_arrays(
                    pa.array(offsets[start : stop + 1] - lo, pa.int32()),
                    pa.array(values[lo:hi], field.type.value_type),
                    type=field.type,
                )
            )
        return pa.Table.from_arrays(arrays, schema=self.schema)


def key_groups(key_column: pa.ChunkedArray | pa.Array, order: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """``(bounds, keys)`` of the groups of ``key_column`` read in ``order`` (rows sorted by key): group ``g`` is
    ``order[bounds[g]:bounds[g + 1]]`` and holds key ``keys[g]``. A None key is a :class:`DataError`.

    Example:
        >>> key_groups(pa.array([2, 1, 2]), np.array([1, 0, 2]))
        (array([0, 1, 3]), [1, 2])
    """
    sorted_keys = key_column.take(pa.array(order))
    if isinstance(sorted_keys, pa.ChunkedArray):
        sorted_keys = sorted_keys.combine_chunks()
    if sorted_keys.null_count:
        raise DataError("the map side produced a None key; keys must be comparable non-null values")
    change = np.flatnonzero(pc.not_equal(sorted_keys[1:], sorted_keys[:-1]).to_numpy(zero_copy_only=False)) + 1
    bounds = np.concatenate([[0], change, [len(order)]]).astype(np.int64)
    return bounds, sorted_keys.take(pa.array(bounds[:-1])).to_pylist()


def range_groups(
    table: pa.Table, order: np.ndarray, bounds: np.ndarray, keys: Sequence[Any], lo: int, hi: int
) -> Iterator[tuple[Any, pa.Table]]:
    """``(key, rows in input order)`` for the groups ``lo..hi`` of ``table``, from one gather of the whole range:
    the reduce side of every engine. Group ``g`` is ``table``'s rows ``order[bounds[g]:bounds[g + 1]]``.

    Example:
        >>> t = pa.table({"x": [10, 11, 12, 13]})
        >>> [(k, g["x"].to_pylist()) for k, g in range_groups(t, np.array([1, 3, 0, 2]), np.array([0, 2, 4]), "ab", 0, 2)]
        [('a', [11, 13]), ('b', [10, 12])]
    """
    a, b = int(bounds[lo]), int(bounds[hi])
    wanted = order[a:b]
    if RowGather.supports(table):
        gathered = RowGather(table, wanted)  # one numpy copy, key-major; groups are then contiguous runs
        for g in range(lo, hi):
            yield keys[g], gathered.table(int(bounds[g]) - a, int(bounds[g + 1]) - a)
        return
    rows = np.sort(wanted)
    sub = gather_rows(table, rows)
    # Key-major order with input order inside each key: positions of ``wanted`` among the sorted rows.
    perm = np.searchsorted(rows, wanted)
    for g in range(lo, hi):
        g0, g1 = int(bounds[g]) - a, int(bounds[g + 1]) - a
        yield keys[g], sub.take(pa.array(perm[g0:g1]))


def reduce_groups(
    transform: MapReduceTransformBase,
    groups: Iterable[tuple[Any, pa.Table]],
    write: Callable[[pa.Table], Any],
    documents: Callable[[pa.Table], Any] | None = None,
) -> tuple[list[Any], list[pa.Table]]:
    """The reduce loop of every engine: each ``(key, rows in input order)`` of ``groups`` (ascending keys) goes
    through ``transform.reduce_group_with_tail``; its packed rows go to ``write``, and ``documents`` (when given)
    first receives the group's documents as the reducer reads them (``transform.group_documents``: the
    ``documents`` config). Returns the groups' stats and their non-empty tails, in key order, for the final pass
    (``transform.reduce_tails``).

    An engine that reads groups another way (spill files, an object store, the documents config itself) calls this
    with its own iterator, so packed rows, stats, tails and documents are the same on every engine.

    Example:
        >>> class Count(MapReduceTransformBase):
        ...     def __init__(self): pass
        ...     def reduce_group_with_tail(self, key, table):
        ...         return pa.table({"k": [key], "n": [table.num_rows]}), {"rows": table.num_rows}, None
        >>> out = []
        >>> reduce_groups(Count(), [(1, pa.table({"x": [5, 6]})), (2, pa.table({"x": [7]}))], out.append)
        ([{'rows': 2}, {'rows': 1}], [])
        >>> [t.to_pydict() for t in out]
        [{'k': [1], 'n': [2]}, {'k': [2], 'n': [1]}]
    """
    stats: list[Any] = []
    tails: list[pa.Table] = []
    for key, part in groups:
        if documents is not None:
            documents(transform.group_documents(key, part))
        out, st, tail = transform.reduce_group_with_tail(key, part)
        if out.num_rows:
            write(out)
        if st is not None:
            stats.append(st)
        if tail is not None and tail.num_rows:
            tails.append(tail)
    return stats, tails


def reduce_tails_into(
    transform: MapReduceTransformBase, tails: list[pa.Table], write: Callable[[pa.Table], Any], stats: list[Any]
) -> None:
    """The final pass of every engine, after the last group: the groups' tails (key order) packed together by
    ``transform.reduce_tails``; the rows go to ``write``, the stats onto ``stats``."""
    tails = [t for t in tails if t.num_rows]
    if not tails:
        return
    out, st = transform.reduce_tails(pa.concat_tables(tails, promote_options="default"))
    if out.num_rows:
        write(out)
    if st is not None:
        stats.append(st)


class ArrowStreamSink:
    """Tables appended to an Arrow IPC stream file under ``schema`` (the format ``datasets`` memory-maps); the file
    appears at ``path`` only when :meth:`close` succeeds (it is ``<path>.tmp`` until then).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "part.arrow")
        >>> with ArrowStreamSink(path, pa.schema([("x", pa.int64())])) as sink:
        ...     sink.write(pa.table({"x": [1, 2]}))
        >>> pa.ipc.open_stream(path).read_all().to_pydict()
        {'x': [1, 2]}
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, max_chunksize: int | None = 1000) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.schema = schema
        self.max_chunksize = max_chunksize
        self.rows = 0
        self._file = pa.OSFile(str(self.tmp), "wb")
        self._writer = pa.ipc.new_stream(self._file, schema)

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (its columns selected and cast to the schema)."""
        self._writer.write_table(table.select(self.schema.names).cast(self.schema), max_chunksize=self.max_chunksize)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ArrowStreamSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def features_schema(features) -> pa.Schema:
    """The Arrow schema of ``features`` with datasets' metadata, so that a file written under it loads with them."""
    return features.arrow_schema.with_metadata(
        {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()}
    )


class _RangeReducer:
    """The reduce side's ``Dataset.map`` function: one task row = one contiguous key range.

    Each range is gathered once (rows in file order, one ``take`` per record batch), its groups are reduced in key
    order, and the output goes straight to an Arrow file of its own (no re-encoding by ``datasets``' writer; the
    driver memory-maps the files in range order). The map's return value only names that file.
    """

    def __init__(
        self, transform, table_source, order, bounds, keys, out_dir: str, schema: pa.Schema | None,
        documents_schema: pa.Schema | None = None,
    ) -> None:
        self.transform = transform
        self.table_source = table_source
        self.order = order
        self.bounds = bounds
        self.keys = keys
        self.out_dir = out_dir
        self.schema = schema
        self.documents_schema = documents_schema
        """Set when the transform keeps its documents: each range also writes ``range-*.docs``, in reduce order."""

    def __call__(self, batch: Mapping[str, list[int]]) -> dict[str, list[Any]] | pa.Table:
        table = arrow_table(self.table_source)
        table = table.drop_columns([c for c in (KEY_COLUMN,) if c in table.column_names])
        if self.schema is None:
            return self._call_inferred(table, batch)
        paths = []
        for lo, hi in zip(batch["lo"], batch["hi"]):
            path = Path(self.out_dir) / f"range-{lo:09d}.arrow"
            groups = range_groups(table, self.order, self.bounds, self.keys, lo, hi)
            with contextlib.ExitStack() as files:
                rows = files.enter_context(ArrowStreamSink(path, self.schema))
                docs = None
                if self.documents_schema is not None:
                    docs = files.enter_context(ArrowStreamSink(path.with_suffix(".docs"), self.documents_schema))
                stats, tails = reduce_groups(self.transform, groups, rows.write, docs.write if docs else None)
            if tails:  # fewer than seq_len tokens per group: kept apart for the driver's final pass
                with ArrowStreamSink(path.with_suffix(".tail"), self.schema, max_chunksize=None) as sink:
                    for t in tails:
                        sink.write(t)
            path.with_suffix(".json").write_text(json.dumps(stats))
            paths.append(str(path))
        return {"path": paths}

    def _call_inferred(self, table: pa.Table, batch: Mapping[str, list[int]]) -> pa.Table:
        outs = []
        for lo, hi in zip(batch["lo"], batch["hi"]):
            stats = []
            for key, part in range_groups(table, self.order, self.bounds, self.keys, lo, hi):
                out, st = self.transform.reduce_group(key, part)
                outs.append(out)
                if st is not None:
                    stats.append(st)
            if stats:
                path = Path(self.out_dir) / f"range-{lo:09d}.json"
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(stats))
                os.replace(tmp, path)
        if not outs:
            return self.transform.empty_output()
        return pa.concat_tables([o for o in outs if o.num_rows] or outs[:1])


def parquet_row_groups(paths: Iterable[str]) -> list[tuple[str, int, int, int]]:
    """``(path, row group, first row, rows)`` of every row group of ``paths`` in order, from the footers only;
    ``first row`` counts rows across all files, as ``load_dataset("parquet", data_files=paths)`` numbers them.

    Example:
        >>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.parquet")
        >>> pq.write_table(pa.table({"text": ["a", "b", "c"]}), path, row_group_size=2)
        >>> [g[1:] for g in parquet_row_groups([path, path])]
        [(0, 0, 2), (1, 2, 1), (0, 3, 2), (1, 5, 1)]
    """
    out, start = [], 0
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            out.append((str(path), g, start, n))
            start += n
    return out


def parquet_sample_texts(
    groups: Sequence[tuple[str, int, int, int]], columns: Sequence[str], max_rows: int = 256, max_groups: int = 8
) -> list[str]:
    """Texts for the backend guard from Parquet row ``groups`` (from :func:`parquet_row_groups`), cheaply: the first
    rows of up to ``max_groups`` evenly spaced row groups (only their first pages are decoded, only the text
    columns: strings and chat lists), then :func:`~hfprep.tokenization.backends.sample_texts` over those rows.
    Deterministic; a full read of the input just for the guard would cost as much as the map itself.

    Example:
        >>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.parquet")
        >>> pq.write_table(pa.table({"text": ["a", "b", "c", "d", "e"]}), path, row_group_size=2)
        >>> parquet_sample_texts(parquet_row_groups([path]), ["text"], max_rows=4)
        ['a', 'b', 'd', 'e']
    """
    groups = [g for g in groups if g[3]]
    if not groups:
        return []
    schema = pq.ParquetFile(groups[0][0]).schema_arrow
    texts = [c for c in columns if c in schema.names and _may_hold_text(schema.field(c).type)]
    if not texts:
        return []
    picked = [groups[i] for i in sample_rows(len(groups), max_groups)]
    per_group = -(-max_rows // len(picked))
    parts = []
    for path, group, _, _ in picked:
        batches = pq.ParquetFile(path).iter_batches(batch_size=per_group, row_groups=[group], columns=texts)
        parts.append(pa.Table.from_batches([next(batches)]))
    return sample_texts(pa.concat_tables(parts), texts, max_rows=max_rows)


def _may_hold_text(t: pa.DataType) -> bool:
    """Columns :func:`~hfprep.tokenization.backends.sample_texts` takes texts from: strings, lists of structs."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type)


def map_in_batches(transform: Any, table: pa.Table, start: int, batch_size: int) -> Iterator[pa.Table]:
    """``transform.map_batch`` over ``table`` in slices of ``batch_size`` rows numbered from ``start``, as Arrow
    tables: the map side of the engines that read files themselves (Parquet row groups here, Ray's read items).

    Example:
        >>> class Upper:
        ...     map_input_format = None
        ...     def map_batch(self, batch, indices):
        ...         return {"i": indices, "t": [x.upper() for x in batch["t"]]}
        >>> [o.to_pydict() for o in map_in_batches(Upper(), pa.table({"t": ["a", "b", "c"]}), 10, 2)]
        [{'i': [10, 11], 't': ['A', 'B']}, {'i': [12], 't': ['C']}]
    """
    arrow = getattr(transform, "map_input_format", None) == "arrow"
    for a in range(0, table.num_rows, batch_size):
        part = table.slice(a, batch_size)
        out = transform.map_batch(part if arrow else part.to_pydict(), list(range(start + a, start + a + part.num_rows)))
        yield out if isinstance(out, pa.Table) else pa.Table.from_pydict(out)


class _ParquetMapper:
    """The map side read straight from Parquet row groups: one task row = one row group, cut into batches of
    ``batch_size`` rows for :meth:`MapReduceTransformBase.map_batch`; rows keep their numbers across the files."""

    def __init__(self, transform: MapReduceTransformBase, batch_size: int, columns: list[str] | None) -> None:
        self.transform = transform
        self.batch_size = batch_size
        self.columns = columns

    def __call__(self, tasks: Mapping[str, list[Any]]) -> pa.Table:
        outs = []
        for path, group, start in zip(tasks["path"], tasks["row_group"], tasks["start"], strict=True):
            table = pq.ParquetFile(path).read_row_group(group, columns=self.columns)
            outs.extend(map_in_batches(self.transform, table, start, self.batch_size))
        outs = [o for o in outs if o.num_rows] or outs[:1]
        return pa.concat_tables(outs) if outs else pa.table({})


class MapReduceTransformBase(TransformBase):
    """A map-reduce: ``map_fn(row)`` yields ``(key, row)``; ``reduce_fn(key, rows)`` yields rows.

    Subclasses may override the batch hooks (:meth:`map_batch`, :meth:`reduce_group`, :meth:`output_features`)
    to work on Arrow tables instead of Python rows; :meth:`run` only moves data.
    """

    reduce_memory_budget: int = DEFAULT_REDUCE_MEMORY_BUDGET
    map_input_format: str | None = None
    """``"arrow"``: :meth:`map_batch` receives ``pyarrow.Table`` batches (zero-copy) instead of Python lists."""
    keep_documents: bool = False
    """Also keep every group's documents, as the reducer reads them (:meth:`group_documents`): after a run the
    engines leave them, in reduce order, in :attr:`last_documents` (``hfprep run``'s ``documents`` config)."""
    last_documents: Any = None
    """The documents of the last run (a ``datasets.Dataset`` with :meth:`documents_features`) when
    :attr:`keep_documents` is set, else None."""

    def __init__(
        self,
        map_fn: Callable[[Row], Iterator[tuple[Any, Row]]],
        reduce_fn: Callable[[Any, Iterable[Row]], Iterator[Row]],
        config: MapReduceTransformConfigBase,
    ) -> None:
        self._map_fn = map_fn
        self._reduce_fn = reduce_fn
        self.config = config
        self.last_stats: list[Any] = []

    # --- hooks -------------------------------------------------------------------------------------------

    def map_batch(self, batch: Mapping[str, list[Any]], indices: list[int]) -> dict[str, list[Any]] | pa.Table:
        """Map a batch; the result has ``__key__`` and ``__index__`` columns plus the row columns."""
        n = len(indices)
        keys, idx, rows = [], [], []
        for i in range(n):
            row = {k: v[i] for k, v in batch.items()}
            for key, out in self._map_fn(row):
                keys.append(key)
                idx.append(indices[i])
                rows.append(out)
        cols = rows_to_columns(rows)
        return {KEY_COLUMN: keys, INDEX_COLUMN: idx, **cols}

    def map_features(self):
        """Features of the map output, or None to let datasets infer them."""
        return None

    def reduce_group(self, key: Any, table: pa.Table) -> tuple[pa.Table, Any]:
        """Reduce one key's rows (input order, ``__index__`` column included); returns ``(table, stats)``."""
        rows = table.drop_columns([INDEX_COLUMN]).to_pylist()
        out = list(self._reduce_fn(key, rows))
        return pa.Table.from_pylist(out), None

    def reduce_group_with_tail(self, key: Any, table: pa.Table) -> tuple[pa.Table, Any, pa.Table | None]:
        """Reduce one group and return what it leaves for the final pass: ``(table, stats, tail or None)``.

        Engines call this, collect the tails of all groups in key order and hand them to :meth:`reduce_tails` once,
        after the last group; its rows come after all groups' rows. Default: :meth:`reduce_group`, no tail.
        """
        out, stats = self.reduce_group(key, table)
        return out, stats, None

    def reduce_worker_view(self) -> MapReduceTransformBase:
        """What the reduce workers get (pickled once per worker): the transform itself by default. A transform whose
        map side holds heavy state that reducing never touches (a tokenizer) returns a copy without it."""
        return self

    def reduce_tails(self, tails: pa.Table) -> tuple[pa.Table, Any]:
        """The final pass over all groups' tails (key order, one table); returns ``(table, stats)``."""
        return self.empty_output(), None

    def group_documents(self, key: Any, table: pa.Table) -> pa.Table:
        """Hook: what the documents config keeps of one group (its rows in the order :meth:`reduce_group_with_tail`
        reads them). Engines call it through :func:`reduce_groups` when :attr:`keep_documents` is set."""
        raise ConfigError(f"{type(self).__name__} keeps no documents (it defines no group_documents)")

    def documents_features(self):
        """Hook: the ``datasets.Features`` of :meth:`group_documents`' tables."""
        raise ConfigError(f"{type(self).__name__} keeps no documents (it defines no documents_features)")

    def output_features(self):
        """Features of the reduce output, or None to let datasets infer them."""
        return None

    def group_order(self, table: pa.Table) -> np.ndarray:
        """Rows of the map output in reduce order: by key, and inside a key in the order the reducer gets them.

        Default: a stable sort of ``__key__`` (input order inside a key). A subclass may return another order, or
        a subset: rows left out are not reduced (the mixture lays chosen documents out this way, with no copy).
        """
        return pc.sort_indices(table.column(KEY_COLUMN)).to_numpy().astype(np.int64)

    def empty_output(self) -> pa.Table:
        feats = self.output_features()
        return feats.arrow_schema.empty_table() if feats is not None else pa.table({})

    def empty_result(self) -> Dataset:
        """What a run over no rows returns (an empty, typed dataset); :attr:`last_documents` is emptied too."""
        self.last_stats = []
        self.last_documents = None
        if self.keep_documents:
            feats = self.documents_features()
            self.last_documents = Dataset(feats.arrow_schema.empty_table(), info=DatasetInfo(features=feats))
        return Dataset(self.empty_output())

    def group_bytes(self, table: pa.Table, bounds: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Approximate in-memory bytes of each group (for planning reduce ranges)."""
        per_row = table.nbytes / max(1, table.num_rows)
        return np.diff(bounds).astype(np.float64) * per_row

    # --- engine -------------------------------------------------------------------------------------------

    def run(self, data: Any, num_proc: int | None = None, batch_size: int = 1000) -> Any:
        ds = to_dataset(data)
        if len(ds) == 0:
            return self._wrap_output(data, self.empty_result())
        if self.map_input_format == "arrow":
            ds = ds.with_format("arrow")
        # The same map call as MapTransformBase.run on purpose, plus the declared map-side features.
        mapped = ds.map(
            self.map_batch,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            remove_columns=ds.column_names,
            num_proc=self.map_num_proc(num_proc),
            features=self.map_features(),
            desc=self.progress_label("map"),
        )
        out = self.reduce(mapped, num_proc=num_proc)
        return self._wrap_output(data, out)

    def run_parquet(
        self, paths: Sequence[str], num_proc: int | None = None, batch_size: int = 1000,
        columns: list[str] | None = None,
    ) -> Any:
        """:meth:`run` on Parquet files without converting them to an Arrow cache first: the map side reads each row
        group itself (``num_proc`` workers, only ``columns`` when given) and its output is removed once reduced. Rows
        are numbered across the files in order, so the result equals
        ``run(load_dataset("parquet", data_files=paths, split="train"))`` with one full pass over the data less.

        Example:
            >>> packed = transform.run_parquet(["part-0.parquet", "part-1.parquet"], num_proc=2)  # doctest: +SKIP
        """
        groups = parquet_row_groups(paths)
        if not sum(g[3] for g in groups):
            return self.empty_result()
        tasks = Dataset.from_dict({k: list(v) for k, v in zip(("path", "row_group", "start", "rows"), zip(*groups))})
        procs = self.map_num_proc(num_proc)
        # Inside a run the map output goes to the run's scratch (removed when the run ends, however it ends);
        # otherwise to datasets' temporary cache folder (removed when Python exits). The reduce output is written
        # next to it; the map files themselves are deleted as soon as the reduce is done.
        if scratch.in_run_scope():
            work = scratch.ScratchDir("map")
            scratch.adopt(work)
            folder = work.path
        else:
            folder = Path(_temporary_cache_dir())
        token = _run_token()
        mapped = tasks.map(
            _ParquetMapper(self, batch_size, columns),
            batched=True,
            batch_size=1,
            remove_columns=tasks.column_names,
            num_proc=min(procs, len(tasks)) if procs else None,
            features=self.map_features(),
            cache_file_name=str(folder / f"cache-{token}-map.arrow"),
            load_from_cache_file=False,
            new_fingerprint=token,  # unique: the reduce output's name derives from it, and the files' content may change
            desc=self.progress_label("map"),
        )
        map_files = [f["filename"] for f in mapped.cache_files]
        try:
            return self.reduce(mapped, num_proc=num_proc)
        finally:
            del mapped
            for f in map_files:
                with contextlib.suppress(OSError):
                    os.remove(f)

    def map_num_proc(self, num_proc: int | None) -> int | None:
        """Workers for the map side (default: ``num_proc``, as for the reduce side). A transform whose map already
        uses every core from one process returns None here."""
        return num_proc

    def reduce(self, mapped, num_proc: int | None = None):
        """Group ``mapped`` (output of the map side) by ``__key__`` and reduce each group."""
        if mapped.num_rows == 0:
            return self.empty_result()
        table = arrow_table(mapped)
        order = self.group_order(table)
        bounds, keys = key_groups(table.column(KEY_COLUMN), order)
        gbytes = self.group_bytes(table, bounds, order)
        self.check_group_bytes(gbytes, keys)
        ranges = plan_reduce_ranges(gbytes, self.reduce_memory_budget, min_ranges=max(1, num_proc or 1))
        tasks = Dataset.from_dict({"lo": [r[0] for r in ranges], "hi": [r[1] for r in ranges]})
        feats = self.output_features()
        self.last_documents = None
        if feats is None:
            if self.keep_documents:
                raise ConfigError(f"{type(self).__name__} declares no output_features, so it keeps no documents")
            return self._reduce_inferred(mapped, tasks, order, bounds, keys, ranges, num_proc)
        schema = features_schema(feats)
        doc_feats = self.documents_features() if self.keep_documents else None
        # The range files go to a scratch folder next to the input's cache files (same disk), or in the temp folder.
        # Inside a run (``scratch.run_scope``) they stay there until the run ends; otherwise they become datasets
        # cache files (``cache-*.arrow``, removed with the dataset's other cache files) and the folder goes at once.
        cache_dir = _cache_dir(mapped)
        scoped = scratch.in_run_scope()
        if cache_dir is None and not scoped:
            cache_dir = _temporary_cache_dir()
        work = scratch.ScratchDir("reduce", cache_dir)
        try:
            reducer = _RangeReducer(
                self.reduce_worker_view(), mapped, order, bounds, keys, str(work.path), schema,
                features_schema(doc_feats) if doc_feats is not None else None,
            )
            done = self._map_tasks(tasks, reducer, mapped, num_proc)
            paths = list(done["path"])
            doc_paths = [str(Path(p).with_suffix(".docs")) for p in paths] if doc_feats is not None else []
            self.last_stats = [s for p in paths for s in json.loads(Path(p).with_suffix(".json").read_text())]
            tail_path = self._reduce_tails([Path(p).with_suffix(".tail") for p in paths], schema, work.path)
            if tail_path is not None:
                paths.append(tail_path)
            if scoped:
                scratch.adopt(work)
            else:
                fp = _reduce_fingerprint(mapped, self)
                paths = _as_cache_files(paths, Path(cache_dir), fp)
                doc_paths = _as_cache_files(doc_paths, Path(cache_dir), f"{fp}-documents")
                work.cleanup()
        except BaseException:
            work.cleanup()
            raise

        if doc_feats is not None:
            self.last_documents = _open_arrow_files(doc_paths, doc_feats)
        return _open_arrow_files(paths, feats)

    def _reduce_tails(self, tail_files: list[Path], schema: pa.Schema, out_dir: Path) -> str | None:
        """The final pass: the groups' tails (range files in key order) -> one more Arrow file, or None."""
        parts = []
        for p in tail_files:
            if p.exists():
                with pa.OSFile(str(p), "rb") as source:
                    parts.append(pa.ipc.open_stream(source).read_all())
        if not parts:
            return None
        out, st = self.reduce_tails(pa.concat_tables(parts))
        if st is not None:
            self.last_stats.append(st)
        if not out.num_rows:
            return None
        path = out_dir / "tails.arrow"
        with ArrowStreamSink(path, schema) as sink:
            sink.write(out)
        return str(path)

    def _map_tasks(self, tasks, reducer, mapped, num_proc: int | None):
        """Run ``reducer`` over the key-range task rows, one range per call, with ``num_proc`` workers."""
        return tasks.map(
            reducer,
            batched=True,
            batch_size=1,
            remove_columns=tasks.column_names,
            num_proc=min(num_proc, len(tasks)) if num_proc else None,
            load_from_cache_file=False,
            new_fingerprint=_reduce_fingerprint(mapped, self),
            desc=self.progress_label("reduce"),
        )

    def _reduce_inferred(self, mapped, tasks, order, bounds, keys, ranges, num_proc):
        """Reduce for transforms without :meth:`output_features`: tables go through datasets' writer, which infers
        one schema over all groups (the seed's row-dict transforms)."""
        with scratch.ScratchDir("stats") as stats_dir:
            reducer = _RangeReducer(self.reduce_worker_view(), mapped, order, bounds, keys, str(stats_dir), None)
            out = self._map_tasks(tasks, reducer, mapped, num_proc)
            self.last_stats = [s for p in sorted(Path(stats_dir).glob("range-*.json")) for s in json.loads(p.read_text())]
        return out

    def check_group_bytes(self, group_bytes: np.ndarray, keys: list[Any]) -> None:
        """Hook: refuse or warn about groups too large for memory (see :mod:`hfprep.pack.transform`)."""

    def input_columns(self) -> list[str]:
        """Hook: the source columns ``map_batch`` reads (none declared by default)."""
        return []

    def check_input_columns(self, columns: Sequence[str], where: str) -> None:
        """Hook: refuse a source without the columns ``map_batch`` reads; every engine calls it before mapping."""

    def guard_backend(self, sample: Sequence[str]) -> dict[str, Any] | None:
        """Hook: check the transform's tokenizer backend on ``sample``, texts of this run's input that every engine
        draws with :func:`~hfprep.tokenization.backends.sample_texts` before mapping (nothing to check by default)."""
        return None


def _cache_dir(mapped) -> str | None:
    """The folder of ``mapped``'s cache files (the reduce output lives next to them), or None for a temp folder."""
    files = getattr(mapped, "cache_files", None) or []
    return str(Path(files[0]["filename"]).parent) if files else None


def _temporary_cache_dir() -> str:
    """datasets' temporary cache folder of this process (removed by datasets when Python exits)."""
    return get_temporary_cache_files_directory()


def _run_token() -> str:
    """A fingerprint no other map output of any process has (datasets names cache files after fingerprints)."""
    return hashlib.sha256(f"{os.getpid()}-{secrets.token_hex(16)}".encode()).hexdigest()[:32]


def _as_cache_files(paths: list[str], cache_dir: Path, fingerprint: str) -> list[str]:
    """Move the reduce range files into ``cache_dir`` as datasets-style cache files (same folder: renames only)."""
    out = []
    for i, p in enumerate(paths):
        dest = cache_dir / f"cache-{fingerprint}-reduce_{i:05d}_of_{len(paths):05d}.arrow"
        os.replace(p, dest)
        out.append(str(dest))
    return out


def _open_arrow_files(paths: Sequence[str], features) -> Dataset:
    """Arrow stream files written by the reduce side, memory-mapped as one ``Dataset`` (in the order given)."""
    info = DatasetInfo(features=features)
    parts = [Dataset.from_file(p, info=info) for p in paths]
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _reduce_fingerprint(mapped, transform) -> str:
    cfg = transform.config.model_dump_json() if hasattr(transform.config, "model_dump_json") else repr(transform.config)
    h = hashlib.sha256(f"{fingerprint(mapped)}|{type(transform).__qualname__}|{cfg}".encode())
    return h.hexdigest()[:32]
