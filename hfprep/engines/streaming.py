"""Streaming sources: run a map-reduce transform over an ``IterableDataset`` (or any iterable of rows) in bounded
memory.

The data flow is the one of :meth:`~hfprep.engines.mapreduce.MapReduceTransformBase.run`, with disk in place of RAM:

1. **map**: rows are read in batches of ``batch_size`` (an ``IterableDataset`` reads its shards in order) and
   tokenized + keyed by ``transform.map_batch`` with their global row index, exactly as ``run`` does;
2. **spill**: mapped rows are buffered up to ``spill_buffer_bytes``, then sorted by key (stably, so rows keep
   input order inside a key) and written to an Arrow IPC file holding one record batch per key;
3. **reduce**: keys in ascending order; each key's record batches are read back from the spill files (in file
   order = input order) and packed with ``transform.reduce_group_with_tail``; packed rows are appended to an Arrow
   cache file that becomes the returned memory-mapped ``datasets.Dataset``; the groups' leftover tails (dense
   packing) are packed together by ``transform.reduce_tails`` after the last group, as ``run`` does.

At any time memory holds one input batch, the spill buffer and one reduce group, whatever the input size. A
group's size grows with the input for a fixed ``num_reduce_chunks``: scale ``num_reduce_chunks`` with the input
(``transform.check_group_bytes`` refuses a group over the transform's memory budget before any packing starts).

The output rows equal ``transform.run(dataset)`` on the same rows (same keys, same group order, same order inside
a group); ``transform.last_stats`` and ``transform.rows_in`` are filled as ``run`` fills them.

Example:
    >>> from datasets import IterableDataset
    >>> stream = IterableDataset.from_generator(lambda: ({"content": f"doc {i}"} for i in range(10)))  # doctest: +SKIP
    >>> packed = prepare_streaming(PrepareForTrainingTransform(cfg), stream, batch_size=1000)  # doctest: +SKIP
    >>> packed.num_rows  # doctest: +SKIP
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, IterableDataset
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import get_temporary_cache_files_directory
from datasets.utils.tqdm import tqdm

from .. import scratch
from ..errors import DataError
from ..tokenization.backends import sample_texts
from .mapreduce import KEY_COLUMN, MapReduceTransformBase, reduce_groups, reduce_tails_into, rows_to_columns

DEFAULT_SPILL_BUFFER_BYTES = 64 * 2**20


def iter_batches(data: Any, batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """Column batches (``{column: [values]}``) of ``batch_size`` rows from a ``datasets`` dataset or row iterable.

    Example:
        >>> [b["a"] for b in iter_batches(iter([{"a": 1}, {"a": 2}, {"a": 3}]), 2)]
        [[1, 2], [3]]
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")

    if isinstance(data, Dataset | IterableDataset):
        yield from data.iter(batch_size=batch_size)
        return
    rows_seen = 0
    it = iter(data)
    while True:
        rows = list(islice(it, batch_size))
        if not rows:
            return
        for j, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise DataError(f"row {rows_seen + j}: expected a dict, got {type(r).__name__}")
        rows_seen += len(rows)
        yield rows_to_columns([dict(r) for r in rows])


@dataclass
class _SpillIndex:
    """Where each key's rows live: ``key -> [(file, record batch index)]`` in input order, and their bytes."""

    parts: dict[Any, list[tuple[str, int]]] = field(default_factory=dict)
    nbytes: dict[Any, int] = field(default_factory=dict)


class _Spiller:
    """Buffers mapped tables and writes them, sorted by key, to IPC files with one record batch per key."""

    def __init__(self, directory: str, buffer_bytes: int, schema: pa.Schema | None) -> None:
        self.directory = directory
        self.buffer_bytes = buffer_bytes
        self.schema = schema
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.files = 0
        self.index = _SpillIndex()

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self.schema is not None:
            table = table.select(self.schema.names).cast(self.schema)
        self.buffer.append(table)
        self.buffered += table.nbytes
        if self.buffered >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer, promote_options="default")
        self.buffer, self.buffered = [], 0
        key_col = table.column(KEY_COLUMN)
        if key_col.null_count:
            raise DataError("the map side produced a None key; keys must be comparable non-null values")
        # pc.sort_indices is stable: rows of one key stay in input order.
        table = table.take(pc.sort_indices(key_col)).combine_chunks()
        keys = table.column(KEY_COLUMN).combine_chunks()
        change = np.flatnonzero(pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)) + 1
        bounds = np.concatenate([[0], change, [table.num_rows]]).astype(np.int64)
        path = os.path.join(self.directory, f"spill-{self.files:06d}.arrow")
        self.files += 1
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            for b, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
                part = table.slice(lo, hi - lo)
                key = keys[lo].as_py()
                writer.write_table(part, max_chunksize=max(1, hi - lo))
                self.index.parts.setdefault(key, []).append((path, b))
                self.index.nbytes[key] = self.index.nbytes.get(key, 0) + part.nbytes

    def read_group(self, key: Any) -> pa.Table:
        batches = []
        for path, b in self.index.parts[key]:
            # A plain file read (not a memory map): pages of earlier groups must not stay resident.
            with pa.OSFile(path, "rb") as source:
                batches.append(pa.ipc.open_file(source).get_batch(b))
        return pa.Table.from_batches(batches)


def _progress(total: int | None, desc: str, unit: str):
    return tqdm(total=total, desc=desc, unit=unit)


def prepare_streaming(
    transform: MapReduceTransformBase,
    data: Any,
    batch_size: int = 1000,
    *,
    cache_dir: str | os.PathLike | None = None,
    spill_dir: str | os.PathLike | None = None,
    spill_buffer_bytes: int = DEFAULT_SPILL_BUFFER_BYTES,
):
    """Run ``transform`` (e.g. a :class:`~hfprep.pack.transform.PrepareForTrainingTransform`) over a stream in bounded
    memory and return the packed rows as a memory-mapped ``datasets.Dataset``.

    Args:
        transform: a map-reduce transform; its ``map_batch`` / ``reduce_group`` hooks do the work.
        data: a ``datasets.IterableDataset`` (streaming source), a ``datasets.Dataset`` or an iterable of dicts.
        batch_size: rows per ``map_batch`` call (``run`` uses the same default).
        cache_dir: folder for the output Arrow file (default: a temporary folder removed when Python exits).
        spill_dir: folder for the intermediate per-key spill files (default: the system temp folder); they are
            deleted when the function returns, however it returns (a killed run's are removed by the next one).
        spill_buffer_bytes: mapped bytes buffered in memory before a spill file is written.

    Returns:
        ``datasets.Dataset`` with the same rows as ``transform.run(data)``; ``transform.last_stats`` and
        ``transform.rows_in`` are set.

    Example:
        >>> rows = ({"content": f"document number {i}"} for i in range(100))
        >>> packed = prepare_streaming(transform, rows, batch_size=32)  # doctest: +SKIP
        >>> transform.rows_in  # doctest: +SKIP
        100
    """
    if spill_buffer_bytes < 1:
        raise DataError(f"spill_buffer_bytes must be >= 1, got {spill_buffer_bytes}")
    map_feats = transform.map_features()
    schema = map_feats.arrow_schema if map_feats is not None else None
    rows_in = 0
    with scratch.ScratchDir("spill", spill_dir) as tmp:
        spiller = _Spiller(str(tmp), spill_buffer_bytes, schema)
        with _progress(None, transform.progress_label("map") + " (streaming)", "rows") as bar:
            for batch in iter_batches(data, batch_size):
                n = len(next(iter(batch.values()))) if batch else 0
                if n == 0:
                    continue
                if rows_in == 0:
                    # A stream cannot be sampled ahead: the fast backend's exactness guard sees the first batch.
                    transform.guard_backend(sample_texts(batch, transform.input_columns()))
                mapped = transform.map_batch(batch, list(range(rows_in, rows_in + n)))
                if not isinstance(mapped, pa.Table):
                    mapped = pa.Table.from_pydict(dict(mapped))
                spiller.add(mapped)
                rows_in += n
                bar.update(n)
        spiller.flush()
        transform.rows_in = rows_in
        keys = sorted(spiller.index.parts)
        if not keys:
            return transform.empty_result()
        transform.check_group_bytes(np.array([spiller.index.nbytes[k] for k in keys], dtype=np.float64), keys)

        if cache_dir is not None:
            out_dir = Path(cache_dir)
        elif scratch.in_run_scope():  # inside a run: the output lives until the run ends, then goes
            work = scratch.ScratchDir("streaming")
            scratch.adopt(work)
            out_dir = work.path
        else:
            out_dir = Path(_temporary_cache_dir())
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / f"hfprep-streaming-{uuid.uuid4().hex}.arrow"
        partial = final.with_suffix(".arrow.incomplete")
        rows_out = 0
        writer = ArrowWriter(features=transform.output_features(), path=str(partial))
        doc_feats = transform.documents_features() if transform.keep_documents else None
        doc_path = final.with_suffix(".documents.arrow")
        docs = ArrowWriter(features=doc_feats, path=str(doc_path)) if doc_feats is not None else None

        def write(out: pa.Table) -> None:
            nonlocal rows_out
            writer.write_table(out)
            rows_out += out.num_rows

        try:
            # Under seq_len tokens per group stay as tails, packed together after the last group.
            groups = ((key, spiller.read_group(key).drop_columns([KEY_COLUMN]))
                      for key in _progress_iter(keys, transform.progress_label("reduce") + " (streaming)"))
            stats, tails = reduce_groups(transform, groups, write, docs.write_table if docs is not None else None)
            reduce_tails_into(transform, tails, write, stats)
            if rows_out:
                writer.finalize()
            if docs is not None:
                docs.finalize()
        except BaseException:
            writer.close()
            partial.unlink(missing_ok=True)
            if docs is not None:
                docs.close()
                doc_path.unlink(missing_ok=True)
            raise
        writer.close()
        transform.last_stats = stats
        if docs is not None:
            docs.close()
            transform.last_documents = Dataset.from_file(str(doc_path))
        if not rows_out:
            # Every group packed to nothing (e.g. all documents longer than seq_len): an empty, typed dataset.
            partial.unlink(missing_ok=True)
            return Dataset(transform.empty_output())
        os.replace(partial, final)
    return Dataset.from_file(str(final))


def _progress_iter(items: list[Any], desc: str) -> Iterable[Any]:
    with _progress(len(items), desc, "keys") as bar:
        for item in items:
            yield item
            bar.update(1)


def _temporary_cache_dir() -> str:
    return get_temporary_cache_files_directory()


__all__ = ["DEFAULT_SPILL_BUFFER_BYTES", "iter_batches", "prepare_streaming"]
