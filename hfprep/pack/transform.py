"""Tokenize -> key -> group -> pack, as one map-reduce transform (the seed's ``PrepareForTrainingTransform``).

Example:
    >>> cfg = PrepareForTrainingTransformConfig(processing_strategy="pretrain", packing_strategy="dense",
    ...     tokenizer_name="path/to/tokenizer", seq_len=8, num_reduce_chunks=2)  # doctest: +SKIP
    >>> packed = PrepareForTrainingTransform(cfg).run(dataset, num_proc=2)  # doctest: +SKIP
    >>> packed.features  # doctest: +SKIP
    {'input_ids': List(Value('uint32')), 'position_ids': List(Value('uint32')), 'loss_mask': List(Value('bool'))}
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydantic
from datasets import Value

from .. import schema as _schema
from ..engines.mapreduce import (
    BYTES_PER_TOKEN_IN_GROUP,
    DEFAULT_REDUCE_MEMORY_BUDGET,
    INDEX_COLUMN,
    KEY_COLUMN,
    MapReduceTransformBase,
    MapReduceTransformConfigBase,
    parquet_row_groups,
    parquet_sample_texts,
    to_dataset,
)
from ..errors import ConfigError, DataError
from ..schema import Row, TokenizedRow, flat_to_table, table_to_flat
from ..tokenization.backends import (
    keep_tokenizers_parallelism,
    resolve_backend,
    sample_texts,
    tokenizers_threads_allowed,
)
from ..tokenization.loading import eos_token_id, load_tokenizer
from ..tokenization.pieces import positions_from_offsets
from ..tokenization.stage import ProcessingStrategy, TokenizeConfig, Tokenizer, tokenized_features
from .keys import array_hash, batch_keys
from .packers import (
    PackStats,
    check_seq_len,
    dense_stats,
    get_packer,
    pack_dense_flat,
    pack_dense_tails_flat,
    positions_are_aranges,
    rebase_row_heads,
    rows_to_flat,
)


class PrepareForTrainingTransformConfig(MapReduceTransformConfigBase):
    """Everything needed to turn raw rows into packed training rows (the seed's config, plus column names).

    Attributes:
        processing_strategy: ``pretrain``, ``fim`` or ``sft``.
        packing_strategy: ``dense`` or ``no_incomplete`` (``bfd`` where available).
        tokenizer_name: Hub id or local path of a fast tokenizer.
        seq_len: length of every packed row (>= 2).
        pad_token_id: padding id for padded packers; defaults to the tokenizer's eos id.
        fim_kwargs: ``only_middle_not_masked`` / ``fim_format`` for the FIM strategy.
        num_reduce_chunks: number of hash keys (reduce groups), >= 1.
        text_column: column with the text / conversation (seed default ``content``).
        packing_kwargs: extra options of the packer (e.g. bfd's ``overflow``).
        reduce_memory_budget: bytes of one reduce range held in memory; a single group above it is an error.
        backend: tokenizer backend, as a recipe's ``tokenizer.backend``: ``auto`` (default) uses ``gigatoken`` where
            it is installed, supports the tokenizer and passes the exactness guard on a sample of the input (so the
            rows are identical to ``hf``'s), else ``hf`` with a one-line warning; ``hf`` or ``gigatoken`` force one.
    """

    processing_strategy: ProcessingStrategy
    packing_strategy: str
    tokenizer_name: str
    seq_len: int
    pad_token_id: int | None = None
    fim_kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    num_reduce_chunks: int
    tokenizer_revision: str | None = None
    text_column: str = "content"
    on_empty: str = "error"
    backend: Literal["auto", "hf", "gigatoken"] = "auto"
    packing_kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    reduce_memory_budget: int = DEFAULT_REDUCE_MEMORY_BUDGET

    @pydantic.field_validator("seq_len")
    @classmethod
    def _seq_len(cls, v: int) -> int:
        if v < 2:
            raise ValueError("seq_len must be >= 2 (a row needs an input token and a target)")
        return v

    @pydantic.field_validator("num_reduce_chunks")
    @classmethod
    def _chunks(cls, v: int) -> int:
        if v < 1:
            raise ValueError("num_reduce_chunks must be >= 1")
        return v

    def build_transform(self, tokenizer=None) -> PrepareForTrainingTransform:
        """The transform this config describes (engines build it through the config, without importing pack)."""
        return PrepareForTrainingTransform(self, tokenizer=tokenizer)

    def tokenize_config(self) -> TokenizeConfig:
        # The seed's FIM options plus every other tokenize option (raw-document FIM, chat template...), so the
        # whole tokenize section travels with this config to every engine.
        allowed = set(TokenizeConfig.model_fields) - {"strategy", "text_column", "on_empty", "backend"}
        unknown = set(self.fim_kwargs) - allowed
        if unknown:
            raise ConfigError(f"unknown fim_kwargs {sorted(unknown)}; allowed: {sorted(allowed)}")
        try:
            return TokenizeConfig(
                strategy=self.processing_strategy,
                text_column=self.text_column,
                on_empty=self.on_empty,
                backend=self.backend,
                **self.fim_kwargs,
            )
        except pydantic.ValidationError as e:
            raise ConfigError(f"invalid tokenize options: {e.errors()[0]['msg']}") from e


class PrepareForTrainingTransform(MapReduceTransformBase):
    """Tokenize with a strategy, key each document by ``array_hash(input_ids) % num_reduce_chunks``, pack per key.

    ``run(dataset, num_proc=N)`` returns a ``datasets.Dataset`` of packed rows (``input_ids`` uint32,
    ``position_ids`` uint32, ``loss_mask`` bool); groups come in ascending key order and documents keep input
    order inside a group, so the rows are the same for every ``num_proc``. After a run, :attr:`stats` holds the
    merged :class:`~hfprep.pack.packers.PackStats` (plus ``rows_in`` and ``docs_dropped_by_tokenizer``: input rows
    that made no document, e.g. empty texts with ``on_empty="drop"``) and :attr:`backend_report` the tokenizer
    backend actually used with its exactness-guard result (:func:`~hfprep.tokenization.backends.resolve_backend`).

    Dense packing across groups (*dense tails*): each group is cut into whole ``seq_len`` rows, and what a group
    cannot fill (the rest of the document cut at its last row end, and the documents after it) is not dropped per
    group but carried to one final pass (:func:`~hfprep.pack.packers.pack_dense_tails_flat`) that lays every
    group's tail end to end in key order and cuts them like one more group. So a run drops at most the one
    incomplete row at its very end, as the seed's single-list ``pack_dense`` does, whatever ``num_reduce_chunks``
    is; ``stats`` counts the tail pass in ``tail_tokens`` / ``tail_rows``.
    """

    def progress_label(self, stage: str) -> str:
        """``tokenize train`` / ``pack train``: the stage and split a user knows, not the class name."""
        label = {"map": "tokenize", "reduce": "pack"}.get(stage, stage)
        return f"{label} {self.progress_split}" if self.progress_split else label

    class _MapFn:
        """Seed API: one row -> ``(key, tokenized row)``."""

        def __init__(self, transform: PrepareForTrainingTransform) -> None:
            self.transform = transform

        def __call__(self, row: Row) -> Iterator[tuple[int, TokenizedRow]]:
            flat = self.transform.tokenizer_stage({k: [v] for k, v in row.items()})
            for i in range(flat.num_docs):
                r = flat.row(i)
                yield array_hash(r["input_ids"]) % self.transform.config.num_reduce_chunks, r

    class _ReduceFn:
        """Seed API: ``(key, tokenized rows)`` -> packed rows."""

        def __init__(self, transform: PrepareForTrainingTransform) -> None:
            self.transform = transform

        def __call__(self, key: int, rows: Iterable[TokenizedRow]) -> Iterator[TokenizedRow]:
            # The same code path as run()'s reduce (pack_table with the config's packing_kwargs), so both give the
            # same rows; positions are checked because seed-API callers may pass rows that hold several segments.
            t = self.transform
            table = flat_to_table(*rows_to_flat(rows))
            packed, _ = pack_table(
                table, t.config.seq_len, t.pad_token_id, t.packer, t.config.packing_kwargs, check_positions=True
            )
            ids, pos, mask, offsets = table_to_flat(packed)
            for a, b in itertools.pairwise(offsets.tolist()):
                yield {"input_ids": ids[a:b], "position_ids": pos[a:b], "loss_mask": mask[a:b]}

    def __init__(
        self,
        config: PrepareForTrainingTransformConfig,
        tokenizer=None,
        tokenize_config: TokenizeConfig | None = None,
        *,
        pack_only: bool = False,
    ) -> None:
        """``tokenize_config``: a tokenize section richer than the seed's config carries (hfprep run's recipes).
        ``pack_only``: the reduce side alone (what ``hfprep repack`` runs over a ``documents`` config): no tokenizer
        is loaded, so ``config.pad_token_id`` must be given; the map side is then unavailable."""
        self.pack_only = pack_only
        if pack_only:
            if config.pad_token_id is None:
                raise ConfigError("a pack-only transform needs pad_token_id (it loads no tokenizer to default it)")
            self.tokenizer = None
        else:
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(
                config.tokenizer_name, revision=config.tokenizer_revision
            )
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else eos_token_id(self.tokenizer)
        self.packer = get_packer(config.packing_strategy)
        self.tokenize_config = tokenize_config if tokenize_config is not None else config.tokenize_config()
        # The tokenizer stage and its backend are made on first use: engines first call guard_backend with a sample
        # of their input, so the backend is resolved (and the fast one built) once per run.
        self._stage: Tokenizer | None = None
        self.backend_report: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}  # e.g. the exactness guard's seconds (shown by --verbose)
        super().__init__(self._MapFn(self), self._ReduceFn(self), config)
        # A reduce range is gathered into one Arrow table: keep it under what one list column can hold.
        self.reduce_memory_budget = min(
            config.reduce_memory_budget, _schema.MAX_LIST_VALUES * BYTES_PER_TOKEN_IN_GROUP
        )
        self.rows_in = 0
        self.docs_tokenized = 0

    # --- map side ---------------------------------------------------------------------------------------------

    def map_batch(self, batch: Mapping[str, list[Any]], indices: list[int]) -> pa.Table:
        flat = self.tokenizer_stage(batch, indices)
        table = flat.to_arrow()
        keys = batch_keys(flat.input_ids, flat.doc_offsets, self.config.num_reduce_chunks)
        index = np.asarray(indices, dtype=np.int64)[flat.kept]
        return table.append_column(KEY_COLUMN, pa.array(keys)).append_column(INDEX_COLUMN, pa.array(index))

    @property
    def num_keys(self) -> int:
        """Reduce keys: ``array_hash(input_ids) % num_keys``."""
        return self.config.num_reduce_chunks

    def map_documents(
        self, batch: pa.Table | Mapping[str, Any], indices: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The map side keeping only what cannot be derived (the direct engine's hook): ``(ids, lengths, keys,
        loss mask or None when every token has loss)``; positions are ``0..n-1`` per document, as the tokenize
        stage always writes them, and :meth:`documents_to_rows` rebuilds them.

        Example:
            >>> ids, lengths, keys, mask = transform.map_documents({"content": ["a b", "c"]}, [0, 1])  # doctest: +SKIP
        """
        if isinstance(batch, pa.Table):
            # pretrain reads Arrow strings as they are (a fast backend encodes them without Python strings)
            arrow = self.tokenize_config.strategy == "pretrain"
            batch = {c: batch.column(c) if arrow else batch.column(c).to_pylist() for c in self.input_columns()}
        ids, doc_offsets, mask = self.tokenizer_stage.documents(batch, indices)
        keys = batch_keys(ids, doc_offsets, self.config.num_reduce_chunks)
        return ids, np.diff(doc_offsets), keys, mask

    @staticmethod
    def documents_to_rows(offsets: np.ndarray, ids: np.ndarray, mask: np.ndarray | None) -> pa.Table:
        """Tokenized rows from what :meth:`map_documents` kept: ``offsets`` (from 0) cut ``ids`` (and ``mask``)
        into documents; positions ``0..n-1`` per document; an all-true mask when ``mask`` is None.

        Example:
            >>> PrepareForTrainingTransform.documents_to_rows(np.array([0, 2, 3]), np.array([7, 8, 9], np.uint32),
            ...                                               None).to_pydict()["position_ids"]
            [[0, 1], [0]]
        """
        if mask is None:
            mask = np.ones(len(ids), np.bool_)
        return flat_to_table(ids, positions_from_offsets(offsets), mask, offsets)

    def map_features(self):
        feats = tokenized_features()
        feats[KEY_COLUMN] = Value("int64")
        feats[INDEX_COLUMN] = Value("int64")
        return feats

    def map_num_proc(self, num_proc: int | None) -> int | None:
        """``hf`` backend, pretrain/fim: tokenize in this process, where HF's Rust threads use every core, and leave
        ``num_proc`` workers to the reduce side. datasets forces HF onto one thread inside its map workers, which
        measured slower than one process with threads (``benchmarks/bench_tokenize.py``). sft renders chat
        templates in Python per row and the fast backend encodes on the calling thread: both keep the workers."""
        cfg = self.tokenize_config
        in_process = (
            num_proc is not None
            and num_proc > 1
            and self.tokenizer_stage.backend.name == "hf"
            and (cfg.strategy == "fim" or (cfg.strategy == "pretrain" and cfg.fim_rate == 0))
            and tokenizers_threads_allowed()
        )
        return None if in_process else num_proc

    # --- reduce side ------------------------------------------------------------------------------------------

    def reduce_worker_view(self) -> PrepareForTrainingTransform:
        """A copy without the tokenizer, for the reduce workers: packing needs only the config, and unpickling a
        tokenizer (~2 MB of JSON for a 65k vocabulary) in every worker cost more than the second worker saved."""
        view = copy.copy(self)
        view.tokenizer = view.tokenizer_stage = None
        view._map_fn = view._reduce_fn = None  # both hold the full transform
        return view

    def reduce_group(self, key: Any, table: pa.Table) -> tuple[pa.Table, dict]:
        packed = pack_table(table, self.config.seq_len, self.pad_token_id, self.packer, self.config.packing_kwargs)
        return packed[0], packed[1].as_dict()

    @property
    def carries_tails(self) -> bool:
        """Dense packing leaves an incomplete tail per group: the engines pack all tails together at the end."""
        return self.packer is pack_dense_flat and not self.config.packing_kwargs

    def reduce_group_with_tail(self, key: Any, table: pa.Table) -> tuple[pa.Table, dict, pa.Table | None]:
        """Dense: pack the group's whole rows and hand its leftover tail to :meth:`reduce_tails` (the other packers
        leave no tail: their last row is padded)."""
        if not self.carries_tails:
            out, stats = self.reduce_group(key, table)
            return out, stats, None
        head, tail = split_dense_tail(table, self.config.seq_len)
        out, stats = self.reduce_group(key, head)
        return out, stats, tail

    def reduce_tails(self, tails: pa.Table) -> tuple[pa.Table, dict]:
        """The final pass: the tails of all groups (in key order) packed densely; at most one partial row is lost
        in the whole run."""
        return pack_dense_tails(tails, self.config.seq_len)

    def output_features(self):
        return tokenized_features()

    def group_documents(self, key: Any, table: pa.Table) -> pa.Table:
        """The group's documents for the ``documents`` config: ids and loss mask, in the order the packer reads them
        (positions are ``0..n-1`` in every tokenized document, so they are not kept)."""
        return _schema.documents_from_rows(table)

    def documents_features(self):
        return _schema.document_features()

    def group_bytes(self, table: pa.Table, bounds: np.ndarray, order: np.ndarray) -> np.ndarray:
        lengths = pc.list_value_length(table.column("input_ids")).to_numpy()
        tokens = np.add.reduceat(lengths[order], bounds[:-1]) if len(order) else np.zeros(0)
        return tokens.astype(np.float64) * BYTES_PER_TOKEN_IN_GROUP

    def check_group_bytes(self, group_bytes: np.ndarray, keys: list[Any]) -> None:
        if not len(group_bytes):
            return
        big = int(np.argmax(group_bytes))
        tokens = group_bytes / BYTES_PER_TOKEN_IN_GROUP
        limit = _schema.MAX_LIST_VALUES
        if tokens[big] > limit:
            # A group is packed from one table: past int32 list offsets Arrow would fail (or wrap) mid-run.
            need = int(np.ceil(tokens.sum() / (limit * 0.5)))
            raise ConfigError(
                f"reduce group {keys[big]} holds {int(tokens[big]):,} tokens, over the {limit:,} values one Arrow "
                f"list column can hold; raise num_reduce_chunks to at least {need}"
            )
        if group_bytes[big] > self.reduce_memory_budget:
            need = int(np.ceil(group_bytes.sum() / (self.reduce_memory_budget * 0.5)))
            raise ConfigError(
                f"reduce group {keys[big]} holds ~{group_bytes[big] / 2**20:.0f} MiB of tokens, over the "
                f"reduce_memory_budget of {self.reduce_memory_budget / 2**20:.0f} MiB; raise num_reduce_chunks "
                f"to at least {need} (or raise reduce_memory_budget)"
            )

    # --- driver -----------------------------------------------------------------------------------------------

    def run(self, data: Any, num_proc: int | None = None, batch_size: int = 1000) -> Any:
        ds = to_dataset(data)
        self.rows_in = len(ds)
        if self.rows_in:
            self.check_input_columns(ds.column_names, "the data")
        self.guard_backend(sample_texts(ds, self.input_columns()))
        with keep_tokenizers_parallelism():  # else HF tokenizers stays single-threaded in this process afterwards
            out = super().run(ds, num_proc=num_proc, batch_size=batch_size)
        return out if isinstance(data, type(ds)) else out.to_list()

    def run_parquet(self, paths: Sequence[str], num_proc: int | None = None, batch_size: int = 1000) -> Any:
        """:meth:`run` on Parquet files read row group by row group (no Arrow cache of the input, only the columns
        the strategy reads): the rows, stats and backend report of
        ``run(load_dataset("parquet", data_files=paths, split="train"))``, one full pass over the data less.

        Example:
            >>> packed = PrepareForTrainingTransform(cfg).run_parquet(["train-0.parquet"], num_proc=2)  # doctest: +SKIP
        """
        groups = parquet_row_groups(paths)
        self.rows_in = sum(g[3] for g in groups)
        for path in dict.fromkeys(g[0] for g in groups):  # every file: a missing column is one line, not a worker's
            self.check_input_columns(pq.ParquetFile(path).schema_arrow.names, path)
        self.guard_backend(parquet_sample_texts(groups, self.input_columns()))
        with keep_tokenizers_parallelism():  # as in run
            return super().run_parquet(paths, num_proc=num_proc, batch_size=batch_size, columns=self.input_columns())

    def input_columns(self) -> list[str]:
        """The source columns the tokenize strategy reads (engines check them before mapping)."""
        return self.tokenize_config.input_columns()

    def check_input_columns(self, columns: Sequence[str], where: str) -> None:
        """Refuse, in one line, a source without the columns the strategy reads (every engine calls this)."""
        missing = [c for c in self.input_columns() if c not in columns]
        if missing:
            raise DataError(
                f"strategy {self.config.processing_strategy!r} needs column(s) {missing}, but {where} has "
                f"{list(columns)}; set tokenize.text_column (fim: tokenize.prefix_column / middle_column / suffix_column; "
                "in Python: PrepareForTrainingTransformConfig.text_column or .fim_kwargs)"
            )

    @property
    def tokenizer_stage(self) -> Tokenizer:
        """The tokenize strategy bound to the tokenizer and its backend (made on first use; the backend is checked
        on the guard's built-in stress set when no engine called :meth:`guard_backend` first)."""
        if self._stage is None:
            if self.pack_only:
                raise ConfigError("this transform packs only (no tokenizer): it has no tokenize stage")
            self.guard_backend(())
        assert self._stage is not None
        return self._stage

    @tokenizer_stage.setter
    def tokenizer_stage(self, stage: Tokenizer | None) -> None:
        self._stage = stage
        if stage is not None:  # its tokenize options are the transform's from now on (a backend check keeps them)
            self.tokenize_config = stage.config

    def guard_backend(self, sample: Sequence[str], input_bytes: int | None = None) -> dict[str, Any]:
        """Resolve the tokenizer backend, proving a fast one exact on ``sample``, a deterministic sample of this
        run's input texts (engines call this before mapping; ``run`` does it with
        :func:`~hfprep.tokenization.backends.sample_texts`); ``input_bytes``: the input's size when known (``auto``
        keeps ``hf`` for inputs too small to pay for building the fast backend). Returns the backend report."""
        if self.backend_report is None or self.backend_report["backend"] != "hf":  # a fallback stays one
            backend, self.backend_report = resolve_backend(
                self.tokenizer, self.config.backend, sample, input_bytes, self.timings
            )
            self._stage = Tokenizer(self.tokenizer, self.tokenize_config, backend)
        return self.backend_report

    @property
    def stats(self) -> dict[str, Any]:
        """Merged packing stats of the last run, with tokenization counts."""
        merged = PackStats()
        for s in self.last_stats:
            merged = merged.merge(PackStats.from_dict(s))
        d = merged.as_dict()
        d["rows_in"] = self.rows_in
        d["docs_dropped_by_tokenizer"] = self.rows_in - merged.docs_in
        return d


def pack_dense_table(table: pa.Table, seq_len: int) -> tuple[pa.Table, PackStats]:
    """Dense packing straight on the group's Arrow buffers: same rows and stats as :func:`pack_dense_flat`.

    ``input_ids`` and ``loss_mask`` rows are zero-copy slices of the input's value buffers (a row that straddles two
    input chunks is copied); only ``position_ids`` are copied, to rebase each row's leading partial segment.
    Nothing the size of the whole group is allocated besides those positions.
    """
    check_seq_len(seq_len)
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    doc_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=doc_offsets[1:])
    stats = dense_stats(doc_offsets, seq_len)
    n_rows = stats.rows
    names = ("input_ids", "position_ids", "loss_mask")
    values = {n: [c.flatten() for c in table.column(n).chunks] for n in names}
    chunk_bounds = np.zeros(len(values["input_ids"]) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in values["input_ids"]], out=chunk_bounds[1:])
    row_start = np.arange(n_rows, dtype=np.int64) * seq_len
    first_chunk = np.searchsorted(chunk_bounds, row_start, side="right") - 1
    last_chunk = np.searchsorted(chunk_bounds, row_start + seq_len - 1, side="right") - 1
    # Runs of consecutive rows inside one chunk become one zero-copy batch; a straddling row is a batch alone.
    alone = first_chunk != last_chunk
    run_break = np.ones(n_rows, dtype=np.bool_)
    run_break[1:] = alone[1:] | alone[:-1] | (first_chunk[1:] != first_chunk[:-1])
    run_starts = [*np.flatnonzero(run_break).tolist(), n_rows]
    batches = []
    for ra, rb in itertools.pairwise(run_starts):
        a, b = ra * seq_len, rb * seq_len
        c0, c1 = int(first_chunk[ra]), int(last_chunk[rb - 1])
        cols = {}
        for n in names:
            parts = []
            for c in range(c0, c1 + 1):
                lo, hi = max(a, int(chunk_bounds[c])), min(b, int(chunk_bounds[c + 1]))
                parts.append(values[n][c].slice(lo - int(chunk_bounds[c]), hi - lo))
            cols[n] = parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
        pos = rebase_row_heads(cols["position_ids"].to_numpy(zero_copy_only=False), doc_offsets, seq_len, rb - ra, ra)
        cols["position_ids"] = pa.array(pos, type=pa.uint32())
        offsets = pa.array(np.arange(rb - ra + 1, dtype=np.int32) * seq_len)
        batches.append(
            pa.RecordBatch.from_arrays([pa.ListArray.from_arrays(offsets, cols[n]) for n in names], names=list(names))
        )
    if not batches:
        return flat_to_table(*(np.zeros(0, t) for t in (np.uint32, np.uint32, np.bool_)), np.zeros(1, np.int64)), stats
    return pa.Table.from_batches(batches), stats


TOKEN_COLUMNS = ("input_ids", "position_ids", "loss_mask")


def split_dense_tail(table: pa.Table, seq_len: int) -> tuple[pa.Table, pa.Table]:
    """Split a group (tokenized rows, input order) at its last whole ``seq_len`` row: ``(head, tail)``.

    ``head`` holds exactly ``(tokens // seq_len) * seq_len`` tokens (the document cut there is sliced in two, zero
    copy), so dense packing of ``head`` gives the group's rows with nothing dropped; ``tail`` (the token columns
    only) is the rest, fewer than ``seq_len`` tokens, whose first row keeps its original positions when it
    continues a document.
    """
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    cut = int(offsets[-1]) // seq_len * seq_len
    k = int(np.searchsorted(offsets, cut, side="right")) - 1  # documents [0, k) end at or before the cut
    tokens = table.select(list(TOKEN_COLUMNS))
    if k >= table.num_rows or offsets[k] == cut:
        return table.slice(0, k), _owned(tokens.slice(k))
    inside = cut - int(offsets[k])
    doc = table.slice(k, 1)
    head_part = pa.table(
        {n: pc.list_slice(c, 0, inside) if n in TOKEN_COLUMNS else c for n, c in zip(doc.column_names, doc.columns)}
    ).cast(table.schema)
    tail_part = tokens.slice(k, 1)
    tail_part = pa.table({n: pc.list_slice(tail_part.column(n), inside) for n in TOKEN_COLUMNS}).cast(tokens.schema)
    return pa.concat_tables([table.slice(0, k), head_part]), _owned(pa.concat_tables([tail_part, tokens.slice(k + 1)]))


def _owned(tail: pa.Table) -> pa.Table:
    """``tail`` in buffers of its own: engines keep every group's tail until the final pass, and a zero-copy slice
    would keep its whole group's tokens alive with it (the whole map output, over a run)."""
    return tail.take(pa.array(np.arange(tail.num_rows, dtype=np.int64)))


def pack_dense_tails(tails: pa.Table, seq_len: int) -> tuple[pa.Table, dict]:
    """:func:`~hfprep.pack.packers.pack_dense_tails_flat` on an Arrow table of tails (key order): ``(rows, stats)``."""
    packed = pack_dense_tails_flat(*table_to_flat(tails), seq_len)
    return flat_to_table(packed.input_ids, packed.position_ids, packed.loss_mask, packed.row_offsets), (
        packed.stats.as_dict()
    )


def pack_table(
    table: pa.Table, seq_len: int, pad_token_id: int, packer, packing_kwargs=None, *, check_positions: bool = False
):
    """Pack one group (an Arrow table of tokenized rows, input order) -> ``(Arrow table, PackStats)``.

    The one reduce path of both :meth:`PrepareForTrainingTransform.run` and the seed API's ``_ReduceFn``.
    ``check_positions``: the rows may hold positions other than one ``0..n-1`` run each (the tokenize stage
    never writes those); dense packing then takes the general per-segment rebase of :func:`pack_dense_flat`.
    """
    if packer is pack_dense_flat and not packing_kwargs:
        if not check_positions:
            return pack_dense_table(table, seq_len)
        ids, pos, mask, offsets = table_to_flat(table)
        if positions_are_aranges(pos, offsets):
            return pack_dense_table(table, seq_len)
    # A constant loss_mask (pre-training) stays a view: the packers fill it instead of unpacking and copying it.
    ids, pos, mask, offsets = table_to_flat(table, constant_mask_as_view=True)
    packed = packer(ids, pos, mask, offsets, seq_len, pad_token_id, **(packing_kwargs or {}))
    return flat_to_table(packed.input_ids, packed.position_ids, packed.loss_mask, packed.row_offsets), packed.stats
