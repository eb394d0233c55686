"""The direct engine: local files -> tokenize -> key -> group -> pack -> Parquet shards, in one process.

``hfprep run`` uses it for local JSON Lines, Parquet and text-folder sources on the ``datasets`` engine: the rows
and bytes are those of ``PrepareForTrainingTransform.run(load_source(spec))`` written by the same shard writer
(tested), without the two copies that path makes on disk (the source as an Arrow cache, the tokenized map output)
and in one pass over the source for every split.

* **Read** (:func:`~hfprep.source.readers.read_batches`): only the strategy's columns, ~32 MB of text a batch, on a
  thread of its own, so the next batch is parsed while this one is tokenized.
* **Map**: each batch goes to its split (the held-out rule), is tokenized by the transform's tokenizer stage (the
  backend's own threads use every core) and keyed (``array_hash % num_reduce_chunks``).
* **Keep only what cannot be derived** (:class:`DocumentStore`): token ids, document lengths and keys, and the loss
  mask only where it is not all true (positions are ``0..n-1`` per document after tokenizing: they are rebuilt
  when a group is packed). 4 bytes a token for pretraining instead of 9, in memory up to ``memory_budget`` and
  spilled beyond it to the run's scratch folder, in key-range buckets so each is read back once, alone.
* **Reduce**: key ranges sized by the transform's ``reduce_memory_budget`` are gathered with one numpy copy each
  (:class:`~hfprep.engines.mapreduce.RowGather`), every group is packed by the transform's own
  ``reduce_group_with_tail`` in key order, dense tails last (``reduce_tails``), and the rows stream into the split's
  :class:`~hfprep.output.shards.ShardWriter`, whose threads write shards while the next ranges are packed.

Example:
    >>> stats = prepare_direct(transform, spec, [("train", "all")], {"train": writer})  # doctest: +SKIP
    >>> stats["train"]["tokens_out"]  # doctest: +SKIP
    1136640
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets.utils import tqdm as hf_tqdm

from .. import scratch
from ..errors import DataError
from ..prefetch import Prefetch
from ..source.loading import SourceSpec, check_parquet_files, heldout_mask, locate_row_error
from ..source.readers import read_batches, window_rows
from ..tokenization.backends import sample_rows, sample_texts
from .mapreduce import (
    BYTES_PER_TOKEN_IN_GROUP,
    RowGather,
    parquet_row_groups,
    parquet_sample_texts,
    plan_reduce_ranges,
    reduce_tails_into,
)

DEFAULT_MEMORY_BUDGET = 768 * 2**20
"""Bytes of tokenized documents kept in memory before they are spilled to the run's scratch folder. With the rest of
a run (libraries, tokenizers, batches in flight: ~0.9 GB for Llama 3.1 on 2 cores) a run peaks under 2 GB at any
input size; ~190M tokens (~750 MB of text) fit before anything is spilled."""
SPILL_BUCKETS = 64
"""Key-range buckets of a spill: each is read back alone, so the reduce holds ~1/64 of the spilled data at once."""
PREFETCH_BATCHES = 2
RANGE_BYTES = 64 * 2**20
"""Tokens (at ``BYTES_PER_TOKEN_IN_GROUP``) the reduce gathers at once: ranges do not change the rows, only memory."""
SHORT_SPANS = 256
"""Mean tokens per document below which spans are gathered with a token index rather than one slice each."""
STARTUP_PREFETCH_BATCHES = 6
"""Batches (~32 MB of text each) the reader may parse ahead: enough to keep it busy while the backend is built."""


@dataclasses.dataclass
class Chunk:
    """Tokenized documents in input order: flat ids, each document's length and key, the loss mask (``None``:
    every token has loss)."""

    ids: np.ndarray
    lengths: np.ndarray
    keys: np.ndarray
    mask: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.lengths.nbytes + self.keys.nbytes + (self.mask.nbytes if self.mask is not None else 0)

    def select(self, docs: np.ndarray) -> Chunk:
        """The documents ``docs`` (ascending), as a chunk of their own."""
        offsets = _offsets(self.lengths)
        lengths = self.lengths[docs]
        starts = offsets[:-1][docs]
        return Chunk(
            _take_spans(self.ids, starts, lengths),
            lengths,
            self.keys[docs],
            None if self.mask is None else _take_spans(self.mask, starts, lengths),
        )


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _take_spans(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``values[starts[i] : starts[i] + lengths[i]]`` for every ``i``, concatenated (a new array)."""
    if not len(lengths):
        return values[:0].copy()
    total = int(lengths.sum())
    if total >= SHORT_SPANS * len(lengths):  # long documents: one memcpy each beats a per-token index
        return np.concatenate([values[a : a + n] for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)])
    shift = starts - (np.cumsum(lengths) - lengths)
    return values[np.arange(total, dtype=np.int64) + np.repeat(shift, lengths)]


class DocumentStore:
    """One split's tokenized documents (the map output), in memory up to ``budget`` bytes, spilled beyond.

    Documents are kept in key-range buckets from the moment they arrive, so :meth:`buckets` can hand one bucket at
    a time to the reducer and free it afterwards: memory falls while the packed rows are written, instead of the
    whole map output living until the last group is packed. Spilled documents go to their bucket's file and come
    back first, before the bucket's later in-memory ones (input order kept).
    """

    def __init__(self, num_keys: int, budget: int = DEFAULT_MEMORY_BUDGET, *, on_spill: Callable[[], Path]) -> None:
        self.num_keys = num_keys
        self.num_buckets = min(SPILL_BUCKETS, num_keys)
        self.budget = budget
        self.on_spill = on_spill
        self.parts: list[list[Chunk]] = [[] for _ in range(self.num_buckets)]
        self.nbytes = 0
        self.peak_nbytes = 0  # the most held in memory at once (tests check the budget holds)
        self.tokens_per_key = np.zeros(num_keys, dtype=np.int64)
        self.docs = 0
        self.spill_dir: Path | None = None
        self.spilled_bytes = 0
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._sinks: dict[int, Any] = {}

    def add(self, chunk: Chunk) -> None:
        if not len(chunk.lengths):
            return
        self.nbytes += chunk.nbytes
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        self.docs += len(chunk.lengths)
        self.tokens_per_key += np.bincount(chunk.keys, weights=chunk.lengths, minlength=self.num_keys).astype(np.int64)
        buckets = self.bucket_of(chunk.keys)
        if self.num_buckets == 1:
            self.parts[0].append(chunk)
        else:
            for b in np.unique(buckets).tolist():
                self.parts[b].append(chunk.select(np.flatnonzero(buckets == b)))
        if self.nbytes > self.budget:
            self.spill()

    def bucket_of(self, keys: np.ndarray) -> np.ndarray:
        return keys * self.num_buckets // self.num_keys

    def spill(self) -> None:
        """Append every document in memory to its bucket's file (input order kept) and free the memory."""
        if self.spill_dir is None:
            self.spill_dir = self.on_spill()
        for b, parts in enumerate(self.parts):
            if not parts:
                continue
            writer = self._writers.get(b)
            if writer is None:
                sink = pa.OSFile(str(self.spill_dir / f"bucket-{b:03d}.arrow"), "wb")
                self._sinks[b] = sink
                writer = self._writers[b] = pa.ipc.new_stream(sink, _SPILL_SCHEMA)
            for part in parts:
                writer.write_batch(_chunk_to_batch(part))
                self.spilled_bytes += part.nbytes
            parts.clear()
        self.nbytes = 0
        release_freed_memory()

    def buckets(self) -> Iterator[list[Chunk]]:
        """The documents in key-range buckets (ascending), each a list of chunks in input order. A bucket's memory
        is the caller's once it is handed out (the store keeps no reference to it)."""
        for writer in self._writers.values():
            writer.close()
        for sink in self._sinks.values():
            sink.close()
        for b in range(self.num_buckets):
            chunks: list[Chunk] = []
            path = self.spill_dir / f"bucket-{b:03d}.arrow" if self.spill_dir is not None else None
            if path is not None and path.exists():
                with pa.OSFile(str(path), "rb") as source:
                    chunks += [_batch_to_chunk(batch) for batch in pa.ipc.open_stream(source)]
                path.unlink()
            chunks += self.parts[b]
            self.nbytes -= sum(c.nbytes for c in self.parts[b])
            self.parts[b] = []
            yield chunks


_SPILL_SCHEMA = pa.schema([
    ("ids", pa.large_list(pa.uint32())),
    ("mask", pa.large_list(pa.bool_())),
    ("key", pa.int64()),
])


def _chunk_to_batch(chunk: Chunk) -> pa.RecordBatch:
    offsets = pa.array(_offsets(chunk.lengths))
    ids = pa.LargeListArray.from_arrays(offsets, pa.array(chunk.ids, pa.uint32()))
    if chunk.mask is None:
        mask = pa.nulls(len(chunk.lengths), pa.large_list(pa.bool_()))
    else:
        mask = pa.LargeListArray.from_arrays(offsets, pa.array(chunk.mask, pa.bool_()))
    return pa.RecordBatch.from_arrays([ids, mask, pa.array(chunk.keys, pa.int64())], schema=_SPILL_SCHEMA)


def _batch_to_chunk(batch: pa.RecordBatch) -> Chunk:
    ids = batch.column(0)
    offsets = ids.offsets.to_numpy()
    mask_col = batch.column(1)
    mask = None if mask_col.null_count == len(mask_col) else mask_col.values.to_numpy(zero_copy_only=False)
    return Chunk(
        ids.values.to_numpy(zero_copy_only=False),
        np.diff(offsets).astype(np.int64),
        batch.column(2).to_numpy(),
        mask,
    )


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    The store's bucket arrays are allocated while the heap is busy with the tokenizer's output, so when a bucket is
    packed and freed its pages sit between live ones and glibc keeps them: without this the process kept ~0.7 GB
    it no longer used through the whole reduce of a 2.5 GB input.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


# ----------------------------------------------------------------------------------------------- map


@dataclasses.dataclass
class SplitState:
    """One split being prepared: its store, its writer and its counts."""

    name: str
    keep: str
    store: DocumentStore
    write: Callable[[pa.Table], None]
    write_documents: Callable[[pa.Table], None] | None = None
    rows_in: int = 0
    stats: list[dict] = dataclasses.field(default_factory=list)


def direct_sample(spec: SourceSpec, columns: Sequence[str], max_rows: int = 256) -> list[str]:
    """The backend guard's sample of ``spec``, the same whatever the splits: the first rows of evenly spaced row
    groups for Parquet (as ``run_parquet`` samples), ``max_rows`` evenly spaced rows of
    :func:`~hfprep.source.readers.window_rows` otherwise (a text folder: evenly spaced files).

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.jsonl")
        >>> _ = open(p, "w").write('{"text": "a"}\\n{"text": "b"}\\n')
        >>> direct_sample(SourceSpec(kind="files", paths=[p], format="jsonl", columns={"text": "content"}), ["content"])
        ['a', 'b']
    """
    back = {new: old for old, new in spec.columns.items()}
    names = [back.get(c, c) for c in columns]
    if spec.kind == "files" and spec.format == "parquet":
        return parquet_sample_texts(parquet_row_groups(spec.paths), names, max_rows=max_rows)
    if spec.kind == "text_dir":  # read only the files the sample keeps
        picked = dataclasses.replace(spec, paths=[spec.paths[i] for i in sample_rows(len(spec.paths), max_rows)])
        return sample_texts(window_rows(picked, names), names, max_rows=max_rows)
    return sample_texts(window_rows(spec, names), names, max_rows=max_rows)


class _Spill:
    """The run's spill folder, made on the first spill (inside ``hfprep run`` it lives until the run ends)."""

    def __init__(self) -> None:
        self.work: scratch.ScratchDir | None = None

    def folder(self, name: str) -> Path:
        if self.work is None:
            self.work = scratch.ScratchDir("spill")
            if scratch.in_run_scope():
                scratch.adopt(self.work)
        path = self.work.path / name
        path.mkdir()
        return path

    def cleanup(self) -> None:
        if self.work is not None:
            self.work.cleanup()


def prepare_direct(
    transform,
    spec: SourceSpec,
    splits: Sequence[tuple[str, str]],
    writers: dict[str, Callable[[pa.Table], None]],
    *,
    documents: dict[str, Callable[[pa.Table], None]] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    log: Callable[[dict[str, Any]], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Prepare every split of ``spec`` in one pass over the source; ``writers[name]`` receives the split's packed
    rows in output order. Returns each split's stats (what ``transform.stats`` gives after ``transform.run``).

    Args:
        transform: a map-reduce transform with the document hooks (``map_documents``, ``documents_to_rows``), e.g.
            :class:`~hfprep.pack.transform.PrepareForTrainingTransform`; its reducer is used as it is, so the rows
            are those of ``transform.run``.
        spec: a source :func:`~hfprep.source.readers.reads_directly` accepts.
        splits: ``(name, keep)`` pairs, ``keep`` being ``all``, ``train`` or ``heldout`` (the held-out rule).
        writers: the split name -> where its rows go (e.g. a :class:`~hfprep.output.shards.ShardWriter`'s write).
        documents: the split name -> where its documents go, group by group in the order the packer reads them
            (``transform.group_documents``), for the ``documents`` config; None: not kept.
        memory_budget: bytes of tokenized documents held in memory, all splits together; the rest is spilled.
        log: progress events.
        timings: receives the seconds of each phase (``guard``, ``map``, ``reduce``), for ``--verbose``.
    """
    timings = timings if timings is not None else {}
    columns = transform.input_columns()
    if spec.kind == "files" and spec.format == "parquet":
        check_parquet_files(spec)  # readable files with rows, before the guard samples them
    started = time.perf_counter()
    input_bytes = sum(os.path.getsize(p) for p in spec.paths)
    # Reading starts now: the first batches are parsed while the fast backend is built and checked (its build
    # holds the GIL for ~1 s; Arrow's JSON parser does not need it).
    reader = Prefetch(read_batches(spec, columns), ahead=STARTUP_PREFETCH_BATCHES).start()
    try:
        transform.guard_backend(direct_sample(spec, columns), input_bytes=input_bytes)
    except BaseException:
        reader.close()
        raise
    timings["guard"] = time.perf_counter() - started
    reader.ahead_at_most(PREFETCH_BATCHES)
    spill = _Spill()
    budget = max(1, memory_budget // max(1, len(splits)))
    states = [
        SplitState(name, keep, DocumentStore(transform.num_keys, budget, on_spill=lambda n=name: spill.folder(n)),
                   writers[name], (documents or {}).get(name))
        for name, keep in splits
    ]
    out = {}
    try:
        started = time.perf_counter()
        try:
            _map_phase(transform, spec, states, reader, input_bytes)
        finally:
            reader.close()
        timings["map"] = time.perf_counter() - started
        for state in states:
            started = time.perf_counter()
            _reduce_phase(transform, state, log)
            timings[f"reduce {state.name}"] = time.perf_counter() - started
            transform.last_stats, transform.rows_in = state.stats, state.rows_in
            out[state.name] = transform.stats
            if state.store.spilled_bytes and log is not None:
                log({"event": "spilled", "split": state.name, "bytes": state.store.spilled_bytes,
                     "memory_budget": budget})
    finally:
        if not scratch.in_run_scope():
            spill.cleanup()
    return out


def _map_phase(transform, spec: SourceSpec, states: list[SplitState], reader: Prefetch, input_bytes: int) -> None:
    all_spec = dataclasses.replace(spec, keep="all")
    bar = hf_tqdm(total=input_bytes, unit="B", unit_scale=True, desc=transform.progress_label("map"))
    try:  # closed on any exit: an error line printed after an open bar would share its line
        for batch in reader:
            rows = np.arange(batch.start, batch.start + batch.num_rows, dtype=np.int64)
            held = None
            if spec.heldout_fraction > 0 and any(s.keep != "all" for s in states):
                held = heldout_mask(batch.table.select(spec.split_columns).to_pydict(), spec.split_columns,
                                    spec.heldout_fraction)
            for state in states:
                if state.keep == "all" or held is None:
                    pick = np.arange(batch.num_rows)
                else:
                    pick = np.flatnonzero(held if state.keep == "heldout" else ~held)
                if not len(pick):
                    continue
                part = batch.table.take(pa.array(pick)) if len(pick) < batch.num_rows else batch.table
                try:
                    chunk = Chunk(*transform.map_documents(part, rows[pick].tolist()))
                except DataError as e:
                    raise locate_row_error(e, all_spec, None) from e.__cause__
                state.rows_in += len(pick)
                state.store.add(chunk)
            release_freed_memory()  # the batch's tokenizer output, framed and bucketed copies: freed between live parts
            bar.update(min(batch.source_bytes, bar.total - bar.n))
    finally:
        bar.close()


def _reduce_phase(transform, state: SplitState, log) -> None:
    if log is not None:
        log({"event": "split", "split": state.name})
    store = state.store
    group_keys = np.flatnonzero(store.tokens_per_key)
    transform.check_group_bytes(
        store.tokens_per_key[group_keys].astype(np.float64) * BYTES_PER_TOKEN_IN_GROUP, group_keys.tolist()
    )
    tails: list[pa.Table] = []
    bar = hf_tqdm(total=int(store.tokens_per_key.sum()), unit="tok", unit_scale=True,
                  desc=f"pack {state.name}")
    try:
        for chunks in store.buckets():
            if chunks:
                _reduce_chunks(transform, chunks, state, tails)
                bar.update(sum(int(c.lengths.sum()) for c in chunks))
            chunks.clear()
            release_freed_memory()
    finally:
        bar.close()
    reduce_tails_into(transform, tails, state.write, state.stats)


def _reduce_chunks(transform, chunks: list[Chunk], state: SplitState, tails: list[pa.Table]) -> None:
    """Pack the documents of ``chunks`` (input order) group by group in key order."""
    keys = np.concatenate([c.keys for c in chunks])
    lengths = np.concatenate([c.lengths for c in chunks])
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    change = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(order)]]).astype(np.int64)
    tokens = np.add.reduceat(lengths[order], bounds[:-1]) if len(order) else np.zeros(0, np.int64)
    # Small ranges: one is gathered, packed and handed to the writer at a time, so memory holds one range, not the
    # transform's whole budget (a group above it is still packed alone, as the transform allows).
    budget = min(transform.reduce_memory_budget, RANGE_BYTES)
    ranges = plan_reduce_ranges(tokens.astype(np.float64) * BYTES_PER_TOKEN_IN_GROUP, budget)
    with_mask = any(c.mask is not None for c in chunks)
    table = _ids_table(chunks, with_mask)
    for lo, hi in ranges:
        a = int(bounds[lo])
        gathered = RowGather(table, order[a : int(bounds[hi])])
        for g in range(lo, hi):
            part = _group_table(transform, gathered, int(bounds[g]) - a, int(bounds[g + 1]) - a, with_mask)
            key = int(sorted_keys[bounds[g]])
            if state.write_documents is not None:
                state.write_documents(transform.group_documents(key, part))
            out, st, tail = transform.reduce_group_with_tail(key, part)
            if st is not None:
                state.stats.append(st)
            if out.num_rows:
                state.write(out)
            if tail is not None and tail.num_rows:
                tails.append(tail)


def _ids_table(chunks: list[Chunk], with_mask: bool) -> pa.Table:
    """The documents of ``chunks`` as one table, a record batch per chunk (zero-copy): ``input_ids`` and, when some
    chunk has one, ``loss_mask``."""
    batches = []
    for c in chunks:
        offsets = pa.array(_offsets(c.lengths).astype(np.int32))  # a chunk is one source batch: far below 2**31
        cols = [pa.ListArray.from_arrays(offsets, pa.array(c.ids, pa.uint32()))]
        if with_mask:
            mask = c.mask if c.mask is not None else np.ones(len(c.ids), np.bool_)
            cols.append(pa.ListArray.from_arrays(offsets, pa.array(mask, pa.bool_())))
        batches.append(pa.RecordBatch.from_arrays(cols, names=["input_ids", "loss_mask"][: len(cols)]))
    return pa.Table.from_batches(batches)


def _group_table(transform, gathered: RowGather, start: int, stop: int, with_mask: bool) -> pa.Table:
    """Rows ``start:stop`` of a gathered range as the transform's tokenized rows (``documents_to_rows``)."""
    offsets, ids = gathered.columns["input_ids"]
    lo, hi = int(offsets[start]), int(offsets[stop])
    mask = gathered.columns["loss_mask"][1][lo:hi] if with_mask else None
    return transform.documents_to_rows(offsets[start : stop + 1] - lo, ids[lo:hi], mask)
