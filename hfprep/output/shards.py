"""Streaming Parquet shards: rows in output order -> ``data/<split>-XXXXX-of-YYYYY.parquet``, row group by row group.

Every output split is written here, whichever engine packed it, so the same rows give the same bytes:

* **Row groups** hold ``row_group_rows`` rows (the last one of a shard may hold fewer) and are always written from
  one contiguous Arrow chunk: Parquet's page boundaries follow the chunks it is handed, so two engines that hand
  over the same rows in different chunks would otherwise write different bytes.
* **Shards** are filled greedily: a shard is closed before a row group that would take it past
  ``max_shard_bytes`` (its in-memory Arrow size, :func:`arrow_nbytes`, counted the same way for every engine) or
  past ``max_rows_per_shard`` rows. Names get their ``-of-YYYYY`` count when the split is complete.
* **Encodings chosen for token ids** (:data:`COLUMN_ENCODINGS`): no dictionary (a 128k vocabulary makes it large and
  slow), zstd, masks run-length encoded. Measured on 39M tokens of real Python code (Llama 3.1 tokenizer, dense 2048
  rows): pyarrow's defaults with zstd wrote 2.12 bytes/token, these settings 1.01 (``input_ids`` 0.995), in 20% less
  time. Positions stay PLAIN: zstd already shrinks a run ``0, 1, 2, ...`` to ~0.02 bytes/token, and on a 63M-token
  shard delta encoding saved 0.015 bytes/token for 17% more write time (2.15 s vs 1.83 s, one thread).
* **In parallel**: each shard is written by a thread of its own (Parquet encoding and zstd release the GIL), fed
  through a queue bounded by ``queue_bytes``, so packing the next rows and writing two shards overlap.

Example:
    >>> import tempfile, pyarrow as pa
    >>> folder = tempfile.mkdtemp()
    >>> with ShardWriter(folder, "train", max_rows_per_shard=2) as w:
    ...     w.write(pa.table({"x": [1, 2, 3]}))
    >>> w.paths
    ['data/train-00000-of-00002.parquet', 'data/train-00001-of-00002.parquet']
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

DATA_DIR = "data"
DEFAULT_ROW_GROUP_ROWS = 1000
DEFAULT_MAX_SHARD_BYTES = 500 * 2**20
DEFAULT_QUEUE_BYTES = 256 * 2**20
"""Row groups waiting for a shard's writer thread, at most: the packer stops ahead of the writers past it."""

COLUMN_ENCODINGS: dict[str, str] = {
    "input_ids": "PLAIN",
    "position_ids": "PLAIN",
    "loss_mask": "RLE",
    "source": "DELTA_BINARY_PACKED",
}
"""Parquet encodings of the token columns' values (dictionary off for them); other columns keep pyarrow's defaults."""
COMPRESSION = "zstd"


def shard_filename(split: str, index: int, num_shards: int, data_dir: str = DATA_DIR) -> str:
    """``data/<split>-XXXXX-of-YYYYY.parquet`` (relative to the dataset folder; ``data_dir``: another config's
    folder, e.g. ``documents``)."""
    return f"{data_dir}/{split}-{index:05d}-of-{num_shards:05d}.parquet"


def shard_schema(schema: pa.Schema, features: Features | None = None) -> pa.Schema:
    """``schema`` with datasets' ``huggingface`` metadata, so ``load_dataset`` restores the exact features."""
    if features is None:
        features = Features.from_arrow_schema(schema)
    meta = {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()}
    return schema.remove_metadata().with_metadata(meta)


def arrow_nbytes(table: pa.Table) -> int:
    """The Arrow size of ``table``'s data, counted from its shape alone the way ``pa.Table.nbytes`` counts a fresh
    table (an offset per row, the values, no validity bitmaps): the same number for the same rows however they are
    chunked or allocated (what ``datasets`` reports as a split's ``num_bytes``).

    Example:
        >>> t = pa.table({"ids": pa.array([[1, 2], [3]], pa.list_(pa.uint32())), "m": [True, False]})
        >>> arrow_nbytes(t)  # ids: 2 offsets (8 bytes) + 3 values (12); m: 2 bits (1 byte)
        21
    """
    return ArrowSize().add(table).nbytes


class ArrowSize:
    """:func:`arrow_nbytes` of row batches added one after another, as if they were one table (booleans are bits:
    they are counted over all batches, not rounded up batch by batch)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.bits: dict[str, int] = {}

    def add(self, table: pa.Table) -> ArrowSize:
        for name, column in zip(table.column_names, table.columns, strict=True):
            self.bytes += _column_nbytes(name, column.type, column, self.bits)
        return self

    @property
    def nbytes(self) -> int:
        return self.bytes + sum(-(-bits // 8) for bits in self.bits.values())


def _column_nbytes(name: str, t: pa.DataType, column: pa.ChunkedArray | pa.Array, bits: dict[str, int]) -> int:
    n = len(column)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        width = 8 if pa.types.is_large_list(t) else 4
        values = sum(len(c.flatten()) for c in _chunks(column))
        return width * n + _values_nbytes(name, t.value_type, values, column, bits)
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        width = 8 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else 4
        data = sum(int(pa.compute.sum(pa.compute.binary_length(c)).as_py() or 0) for c in _chunks(column))
        return width * n + data
    return _values_nbytes(name, t, n, column, bits)


def _values_nbytes(name: str, t: pa.DataType, n: int, column: pa.ChunkedArray | pa.Array, bits: dict[str, int]) -> int:
    if pa.types.is_boolean(t):
        bits[name] = bits.get(name, 0) + n
        return 0
    try:
        return n * t.bit_width // 8
    except ValueError:  # nested or variable-width values: fall back to Arrow's own count
        return int(column.nbytes)


def _chunks(column: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """``pq.ParquetWriter`` settings: :data:`COLUMN_ENCODINGS` for the token columns present, defaults for the rest."""
    encodings = {}
    dictionary = []
    for field in schema:
        t = field.type
        leaf = f"{field.name}.list.element" if pa.types.is_list(t) or pa.types.is_large_list(t) else field.name
        if field.name in COLUMN_ENCODINGS:
            encodings[leaf] = COLUMN_ENCODINGS[field.name]
        else:
            dictionary.append(leaf)
    return {
        "compression": COMPRESSION,
        "use_dictionary": dictionary,
        "column_encoding": encodings or None,
        "write_statistics": False,
    }


class _ShardThread:
    """One shard's Parquet file, written by a thread of its own from a queue of row groups."""

    def __init__(self, path: Path, schema: pa.Schema, budget: _Budget) -> None:
        self.path = path
        self.schema = schema
        self.budget = budget
        self.queue: queue.Queue[pa.Table | None] = queue.Queue()
        self.error: BaseException | None = None
        self.ended = False
        self.thread = threading.Thread(target=self._run, name=f"hfprep-write-{path.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with pq.ParquetWriter(str(self.path), self.schema, **parquet_options(self.schema)) as writer:
                while (table := self.queue.get()) is not None:
                    writer.write_table(table, row_group_size=table.num_rows)
                    self.budget.release(table)
        except BaseException as e:  # reported to the producer at its next write or at close
            self.error = e
            while (table := self.queue.get()) is not None:
                self.budget.release(table)

    def put(self, table: pa.Table) -> None:
        self.queue.put(table)

    def end(self) -> None:
        """No more row groups: the thread closes the file once its queue is written."""
        if not self.ended:
            self.ended = True
            self.queue.put(None)

    def join(self) -> None:
        """Wait for the file to be complete; re-raise the thread's error."""
        self.end()
        self.thread.join()
        if self.error is not None:
            raise self.error


class _Budget:
    """Bytes of row groups queued for the writer threads; :meth:`acquire` waits while over ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def acquire(self, table: pa.Table, failed: Callable[[], BaseException | None]) -> None:
        size = table.nbytes
        with self.cond:
            while self.used and self.used + size > self.limit and failed() is None:
                self.cond.wait(timeout=0.5)
            self.used += size

    def release(self, table: pa.Table) -> None:
        with self.cond:
            self.used -= table.nbytes
            self.cond.notify_all()


class ShardWriter:
    """Write one split's rows, in order, as Hub-layout Parquet shards under ``folder``; :attr:`paths` after close.

    A split with no rows is one shard with no rows (what ``datasets`` writes), once :meth:`write` saw its schema.

    Args:
        folder: the dataset folder (shards go under ``data/``).
        split: the split name in the shard names.
        features: ``datasets.Features`` recorded in the files (default: inferred from the first rows).
        row_group_rows: rows per Parquet row group.
        max_rows_per_shard: most rows in one shard (``None``: no limit).
        max_shard_bytes: most Arrow bytes (:func:`arrow_nbytes`) in one shard (``None``: no limit).
        threads: shards written at the same time (each by its own thread).
        queue_bytes: most bytes of row groups waiting for the writer threads.
        on_row_group: called with every row group, in order, before it is queued (stats of the written rows).
        data_dir: the folder of the config the shards belong to (``data``; ``documents`` for the documents config).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        split: str,
        features: Features | None = None,
        *,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        max_rows_per_shard: int | None = None,
        max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
        threads: int = 2,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        on_row_group: Callable[[pa.Table], None] | None = None,
        data_dir: str = DATA_DIR,
    ) -> None:
        if row_group_rows < 1:
            raise ValueError("row_group_rows must be >= 1")
        self.folder = Path(folder)
        self.data_dir = data_dir
        self.split = split
        self.features = features
        self.row_group_rows = row_group_rows
        self.max_rows_per_shard = max_rows_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.threads = max(1, threads)
        self.budget = _Budget(queue_bytes)
        self.on_row_group = on_row_group
        self.schema: pa.Schema | None = None
        self.paths: list[str] = []
        self.rows = 0
        self._size = ArrowSize()
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._shards: list[_ShardThread] = []
        self._shard_rows = 0
        self._shard_bytes = 0
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def nbytes(self) -> int:
        """:func:`arrow_nbytes` of every row written so far, as one table (the split's ``num_bytes``)."""
        return self._size.nbytes

    def write(self, table: pa.Table) -> None:
        """Append ``table``'s rows (any chunking) after the rows written so far."""
        if self._closed:
            raise ValueError("write() after close()")
        if self.schema is None:
            self.schema = shard_schema(table.schema, self.features)
        self._raise_writer_error()
        start = 0
        while start < table.num_rows:
            part = table.slice(start, self._row_group_room() - self._pending_rows)
            self._pending.append(part)
            self._pending_rows += part.num_rows
            start += part.num_rows
            if self._pending_rows == self._row_group_room():
                self._flush_row_group()

    def close(self) -> list[str]:
        """Write the last row group, wait for the writer threads and give the shards their final names."""
        if self._closed:
            return self.paths
        try:
            if self._pending_rows:
                self._flush_row_group()
            if not self._shards and self.schema is not None:
                self._open_shard()
            for shard in self._shards:
                shard.join()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        count = len(self._shards)
        for i, shard in enumerate(self._shards):
            rel = shard_filename(self.split, i, count, self.data_dir)
            os.replace(shard.path, self.folder / rel)
            self.paths.append(rel)
        return self.paths

    def abort(self) -> None:
        """Stop the writer threads and remove every file this writer made."""
        self._closed = True
        for shard in self._shards:
            shard.end()
        for shard in self._shards:
            shard.thread.join()
            with contextlib.suppress(OSError):
                shard.path.unlink()

    def _row_group_room(self) -> int:
        """Rows the row group being filled may hold: a full row group, or what the shard's row limit leaves."""
        if self.max_rows_per_shard is None:
            return self.row_group_rows
        used = self._shard_rows if self._shards and self._shard_rows < self.max_rows_per_shard else 0
        return max(1, min(self.row_group_rows, self.max_rows_per_shard - used))

    def _flush_row_group(self) -> None:
        group = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        # One contiguous chunk that owns its memory: the same rows then give the same pages, and a queued row group
        # does not keep a packer's whole buffer alive.
        group = group.combine_chunks()
        if group.schema.equals(self.schema, check_metadata=False):
            group = group.replace_schema_metadata(self.schema.metadata)
        else:
            group = group.cast(self.schema)
        size = arrow_nbytes(group)
        self._size.add(group)
        if self.on_row_group is not None:
            self.on_row_group(group)
        if not self._shards or self._shard_full(group.num_rows, size):
            self._open_shard()
        self._shard_rows += group.num_rows
        self._shard_bytes += size
        self.rows += group.num_rows
        self.budget.acquire(group, self._writer_error)
        self._raise_writer_error()
        self._shards[-1].put(group)

    def _shard_full(self, rows: int, size: int) -> bool:
        if self.max_rows_per_shard is not None and self._shard_rows + rows > self.max_rows_per_shard:
            return True
        if self.max_shard_bytes is None or not self._shard_bytes:
            return False
        return self._shard_bytes + size > self.max_shard_bytes

    def _open_shard(self) -> None:
        if self._shards:
            self._shards[-1].end()
        # At most ``threads`` shards being written at once: wait for the oldest before starting another.
        running = [s for s in self._shards if s.thread.is_alive()]
        while len(running) >= self.threads:
            running.pop(0).join()
        (self.folder / self.data_dir).mkdir(parents=True, exist_ok=True)
        path = self.folder / self.data_dir / f".{self.split}-{len(self._shards):05d}.parquet.partial"
        self._shards.append(_ShardThread(path, self.schema, self.budget))
        self._shard_rows = self._shard_bytes = 0

    def _writer_error(self) -> BaseException | None:
        return next((s.error for s in self._shards if s.error is not None), None)

    def _raise_writer_error(self) -> None:
        err = self._writer_error()
        if err is not None:
            raise err


def write_split(
    table: pa.Table | Iterable[pa.Table],
    folder: str | os.PathLike,
    split: str,
    features: Features | None = None,
    max_rows_per_shard: int | None = None,
    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    on_row_group: Callable[[pa.Table], None] | None = None,
    threads: int = 2,
    data_dir: str = DATA_DIR,
) -> list[str]:
    """Write ``table`` (or tables, in order) as the shards of ``split`` under ``folder``; returns the relative shard
    paths. The rows and their order are kept; see :class:`ShardWriter` for the sharding rule.

    Example:
        >>> import tempfile, pyarrow as pa
        >>> write_split(pa.table({"x": [1, 2, 3]}), tempfile.mkdtemp(), "train")
        ['data/train-00000-of-00001.parquet']
    """
    with ShardWriter(
        folder, split, features, row_group_rows=row_group_rows, max_rows_per_shard=max_rows_per_shard,
        max_shard_bytes=max_shard_bytes, threads=threads, on_row_group=on_row_group, data_dir=data_dir,
    ) as writer:
        for t in [table] if isinstance(table, pa.Table) else table:
            writer.write(t)
    return writer.paths
