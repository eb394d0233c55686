"""The mixture path of ``hfprep run`` (a recipe with ``sources:``).

For each split: every source is tokenized with its own tokenize section (one ``Dataset.map`` per source and
epoch, ``num_proc`` workers), each document carrying its map-reduce key and the seeded hash of its content;
:func:`hfprep.mixture.choose_documents` picks whole documents per source to within one document of its budget
(whole epochs first; raw-document FIM is re-drawn per epoch with ``fim_seed + epoch``); the chosen documents of
all sources are laid out in :func:`hfprep.mixture.mix_order` and go through the same group + pack reduce as a
single source (:class:`MixtureTransform`): on the ``datasets`` engine, or with ``engine: ray`` on Ray (the
tokenization and the choice stay on this machine; Ray groups and packs), with the same rows. The reduce reads the
tokenized sources in mixing order (no mixed copy), labels every packed token with its source index (dense: from
the documents' order; the other packers: by packing the group a second time with each token replaced by its
document's index, checked to land the same way) and packs dense tails of all groups together at the end, as a
single source does. That gives the per-source token counts of the card and the optional ``source`` column.

Budgets apply to the first (train) split; a held-out split holds every source's held-out documents once.

Example:
    >>> summary = run_recipe("recipes/mixture_stdlib.yaml", overwrite=True)  # doctest: +SKIP
    >>> [r["name"] for r in summary["mixture"]["sources"]]  # doctest: +SKIP
    ['code', 'docs']
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value, concatenate_datasets

from .configure import (
    RecordingTransform,
    SplitResult,
    TokenizerInfo,
    prepare_tokenizer,
    split_stats_from,
    transform_config,
)
from .describe import card_source, source_revision
from .engines.mapreduce import INDEX_COLUMN, KEY_COLUMN
from .engines.ray_engine import run_on_ray
from .errors import ConfigError, DataError
from .mixture import (
    CONTENT_HASH_RULE,
    Selection,
    choose_documents,
    content_hashes,
    mix_order,
    plan_budgets,
    source_tokenize_config,
)
from .output.card import dataset_info_yaml, dump_yaml, hfprep_block, parse_card_metadata
from .output.mixture_report import SourceReport, mixture_table
from .output.plots import _COLORS, _figure, _save
from .pack.keys import batch_keys
from .pack.packers import pack_dense_flat
from .pack.transform import TOKEN_COLUMNS, table_to_flat
from .schema import SOURCE_COLUMN, SOURCE_PAD, document_features, documents_from_rows
from .source.loading import SourceSpec, conversion_cache_dir, load_source, resolve_source, select_split
from .tokenization.backends import keep_tokenizers_parallelism, resolve_backend, sample_texts
from .tokenization.loading import vocab_size
from .tokenization.stage import TokenizeConfig, Tokenizer, tokenized_features
from .tokenization.training import train_cached_tokenizer, training_texts

SOURCE_ID = "__source__"
HASH = "__hash__"
MIX_OUT_PREFIX = "mixture_tokens_out_"
MIX_DROPPED_PREFIX = "mixture_tokens_dropped_"
MIX_CUT_PREFIX = "mixture_tokens_cut_"
CHART = "mixture_shares.png"
_LAYOUT_PAD = np.iinfo(np.uint32).max


# ----------------------------------------------------------------------------------------------- reduce


def _per_source(prefix: str, counts: np.ndarray) -> dict[str, int]:
    return {f"{prefix}{s}": round(c) for s, c in enumerate(counts.tolist())}


class MixtureTransform(RecordingTransform):
    """The single-source reduce (pack + document-length bins, dense tails packed together at the end) plus the
    per-token ``source`` column of the packed rows and per-source token counts (written, dropped whole, cut).

    The reduce order is the mixing order (:meth:`group_order` over :attr:`mix_rows`), so the chosen documents of
    all sources and epochs are never copied into one mixed table before grouping. The ``source`` column is always
    produced (dense tails carry it into the final pass); the run writes it only when the recipe asks.
    """

    def __init__(self, config, tokenizer, num_sources: int, source_column: bool, *, pack_only: bool = False) -> None:
        # The mixture tokenizes before the reduce, with the backend the run guarded once: this transform only
        # packs, so it must not run the exactness guard again (backend "hf" builds no fast backend).
        super().__init__(config.model_copy(update={"backend": "hf"}), tokenizer=tokenizer, pack_only=pack_only)
        self.num_sources = num_sources
        self.source_column = source_column
        self.mix_rows: np.ndarray | None = None
        """Rows of the reduce input (chosen documents of every source and epoch) in the mixing order."""

    @property
    def _dense(self) -> bool:
        return self.packer is pack_dense_flat and not self.config.packing_kwargs

    def group_order(self, table: pa.Table) -> np.ndarray:
        """The chosen rows only, by key, in the mixing order inside a key (a stable sort of their keys)."""
        if self.mix_rows is None:
            return super().group_order(table)
        keys = table.column(KEY_COLUMN).to_numpy()
        return self.mix_rows[np.argsort(keys[self.mix_rows], kind="stable")]

    def _counts(self, stats: dict, doc_src: np.ndarray, lengths: np.ndarray, out_per_doc: np.ndarray, carried=None):
        """Per source: tokens written, tokens of documents dropped whole, tokens cut off documents kept in part
        (``carried``: documents whose rest goes on elsewhere, e.g. continuations in the tail pass, count as cut)."""
        n = self.num_sources
        stats.update(_per_source(MIX_OUT_PREFIX, np.bincount(doc_src, weights=out_per_doc, minlength=n)))
        whole = out_per_doc == 0
        if carried is not None:
            whole &= ~carried
        stats.update(_per_source(MIX_DROPPED_PREFIX, np.bincount(doc_src[whole], weights=lengths[whole], minlength=n)))
        cut = lengths - out_per_doc
        stats.update(_per_source(MIX_CUT_PREFIX, np.bincount(doc_src[~whole], weights=cut[~whole], minlength=n)))

    def reduce_group(self, key: Any, table: pa.Table) -> tuple[pa.Table, dict]:
        packed, stats = super().reduce_group(key, table)
        lengths = _list_lengths(table.column("input_ids"))
        doc_src = table.column(SOURCE_ID).to_numpy().astype(np.int64)
        if self._dense:
            # Dense packing writes the documents' tokens in order and cuts rows: the packed tokens are a prefix of
            # the group's tokens (all of them for a group head), so no second pack is needed to place them.
            written = int(stats["tokens_out"])
            ends = np.cumsum(lengths)
            out_per_doc = np.clip(np.minimum(ends, written) - (ends - lengths), 0, None)
            src = np.repeat(doc_src.astype(np.int16), lengths)[:written]
            row_offsets = np.arange(written // self.config.seq_len + 1, dtype=np.int64) * self.config.seq_len
        else:
            doc, row_offsets = self.document_layout(table, packed)
            real = doc >= 0
            out_per_doc = np.bincount(doc[real], minlength=len(lengths))
            src = np.where(real, doc_src[np.maximum(doc, 0)], SOURCE_PAD).astype(np.int16)
        self._counts(stats, doc_src, lengths, out_per_doc)
        return packed.append_column(SOURCE_COLUMN, _source_lists(row_offsets, src)), stats

    def reduce_group_with_tail(self, key: Any, table: pa.Table) -> tuple[pa.Table, dict, pa.Table | None]:
        """Dense: the group's tail (its last documents, or their rest) goes to :meth:`reduce_tails` with the source
        of every token, so the final pass can count and label what it packs."""
        packed, stats, tail = super().reduce_group_with_tail(key, table)
        if tail is not None:
            lengths = _list_lengths(tail.column("input_ids"))
            doc_src = table.column(SOURCE_ID).to_numpy().astype(np.int16)[table.num_rows - tail.num_rows :]
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            tail = tail.append_column(SOURCE_COLUMN, _source_lists(offsets, np.repeat(doc_src, lengths)))
        return packed, stats, tail

    def reduce_tails(self, tails: pa.Table) -> tuple[pa.Table, dict]:
        """The final dense pass over all groups' tails (key order), with their sources: at most one partial row of
        the whole run is lost, counted per source."""
        out, stats = super().reduce_tails(tails.select(list(TOKEN_COLUMNS)))
        _, pos, _, offsets = table_to_flat(tails)
        src = _flat_values(tails.column(SOURCE_COLUMN), np.int16)
        starts, lengths = offsets[:-1], np.diff(offsets)
        doc_src = src[starts[lengths > 0]].astype(np.int64)
        starts, lengths = starts[lengths > 0], lengths[lengths > 0]
        written = int(stats["tokens_out"])
        out_per_doc = np.clip(np.minimum(starts + lengths, written) - starts, 0, None)
        carried = pos[starts] != 0  # continuations: the document's start was written in its group
        self._counts(stats, doc_src, lengths, out_per_doc, carried)
        row_offsets = np.arange(written // self.config.seq_len + 1, dtype=np.int64) * self.config.seq_len
        return out.append_column(SOURCE_COLUMN, _source_lists(row_offsets, src[:written].astype(np.int16))), stats

    def document_layout(self, table: pa.Table, packed: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """For every token of the packed group ``packed``: the index of its document in ``table`` (``-1`` on
        padding), from the group packed again with each token replaced by its document's index; and the packed
        rows' offsets."""
        _, pos, mask, offsets = table_to_flat(table)
        layout_ids = np.repeat(np.arange(len(offsets) - 1, dtype=np.uint32), np.diff(offsets))
        cfg = self.config
        lay = self.packer(layout_ids, pos, mask, offsets, cfg.seq_len, int(_LAYOUT_PAD), **cfg.packing_kwargs)
        _, real_pos, _, real_offsets = table_to_flat(packed)
        if not (np.array_equal(lay.row_offsets, real_offsets) and np.array_equal(lay.position_ids, real_pos)):
            raise ConfigError(
                f"packer {cfg.packing_strategy!r} places documents by their token values, so the mixture cannot tell "
                "which source each token came from; use dense, no_incomplete or bfd"
            )
        doc = lay.input_ids.astype(np.int64)
        doc[lay.input_ids == _LAYOUT_PAD] = -1
        return doc, real_offsets

    # --- the Ray engine's map side: the mixed documents are already tokenized and keyed; pass them through with
    # their global position as ``__index__`` (Ray's reduce keeps the input order, which is the mixing order) ------

    map_input_format = "arrow"

    def map_batch(self, batch, indices):
        cols = ["input_ids", "position_ids", "loss_mask", KEY_COLUMN, SOURCE_ID]
        return batch.select(cols).append_column(INDEX_COLUMN, pa.array(np.asarray(indices, dtype=np.int64)))

    def map_features(self):
        feats = tokenized_features()
        feats[KEY_COLUMN] = Value("int64")
        feats[SOURCE_ID] = Value("int64")
        feats[INDEX_COLUMN] = Value("int64")
        return feats

    def output_features(self):
        feats = tokenized_features()
        feats[SOURCE_COLUMN] = List(Value("int16"))
        return feats

    def group_documents(self, key: Any, table: pa.Table) -> pa.Table:
        """The group's documents with the index of the source each came from (the documents config's ``source``)."""
        return documents_from_rows(table, source=table.column(SOURCE_ID))

    def documents_features(self):
        return document_features(with_source=True)


def _list_lengths(col: pa.ChunkedArray) -> np.ndarray:
    return pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)


def _flat_values(col: pa.ChunkedArray, dtype) -> np.ndarray:
    """The values of a list column, in order (``flatten`` respects sliced lists, ``.values`` would not)."""
    parts = [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _source_lists(row_offsets: np.ndarray, src: np.ndarray) -> pa.Array:
    """The ``source`` column: one int16 list per packed row."""
    return pa.ListArray.from_arrays(pa.array(row_offsets.astype(np.int32)), pa.array(src.astype(np.int16, copy=False)))


# ----------------------------------------------------------------------------------------------- tokenize


class _TokenizeSource:
    """``Dataset.map`` function: raw rows of one source -> tokenized documents + key, source index, content hash."""

    def __init__(self, stage: Tokenizer, source: int, columns: list[str], seed: int, num_reduce_chunks: int) -> None:
        self.stage = stage
        self.source = source
        self.columns = columns
        self.seed = seed
        self.num_reduce_chunks = num_reduce_chunks
        # datasets' cache key of this map is a hash of this object's attributes, not of the code: name the hash rule
        # so a cache written under another rule is never reused for the choice.
        self.hash_rule = CONTENT_HASH_RULE

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> pa.Table:
        flat = self.stage(batch, indices)
        table = flat.to_arrow()
        kept = np.asarray(flat.kept, dtype=np.int64)
        hashes = content_hashes({c: batch[c] for c in self.columns}, self.columns, self.seed)[kept]
        keys = batch_keys(flat.input_ids, flat.doc_offsets, self.num_reduce_chunks)
        return (
            table.append_column(KEY_COLUMN, pa.array(keys, pa.int64()))
            .append_column(SOURCE_ID, pa.array(np.full(len(kept), self.source, np.int64)))
            .append_column(HASH, pa.array(hashes, pa.uint64()))
        )


def _tokenized_features():
    feats = tokenized_features()
    feats[KEY_COLUMN] = Value("int64")
    feats[SOURCE_ID] = Value("int64")
    feats[HASH] = Value("uint64")
    return feats


@dataclasses.dataclass
class _Source:
    index: int
    name: str
    where: str
    spec: SourceSpec
    tcfg: TokenizeConfig
    dataset: Any
    budget: int = 0
    redraws: bool = False  # raw-document FIM: each epoch draws its own split


def _source_configs(recipe) -> list[TokenizeConfig]:
    out = []
    for i, s in enumerate(recipe.sources):
        cfg = source_tokenize_config(recipe, i) if s.tokenize is not None else recipe.tokenize
        set_keys = set(recipe.tokenize.model_fields_set) | set(s.tokenize or {})
        update: dict[str, Any] = {"backend": recipe.tokenizer.backend}
        if "fim_seed" not in set_keys:
            update["fim_seed"] = recipe.seed
        out.append(cfg.model_copy(update=update))
    return out


def _rows(ds, run: str):
    del run  # only feeds datasets' cache fingerprint
    yield from ds


def _materialize(ds, spec: SourceSpec, where: str):
    """A streaming source read once, in order, into a local Arrow dataset (only its first ``max_rows`` rows are
    ever fetched). The choice needs every document's hash and length before any is emitted, so a streamed source
    is kept on disk like a loaded one; afterwards it is the same rows as the non-streaming source."""

    # A fresh fingerprint: the stream's content is not known up front, so datasets' cache must not reuse a file; in a
    # run the copy goes to the run's scratch (conversion_cache_dir), so it does not outlive the run.
    out = Dataset.from_generator(
        _rows, features=getattr(ds, "features", None), gen_kwargs={"ds": ds, "run": uuid.uuid4().hex}, split="train",
        cache_dir=conversion_cache_dir(),
    )
    if len(out) == 0:
        raise DataError(f"source {spec.describe()} has zero rows; check the path/split (nothing to prepare)")
    return out


def _prepare_tokenizer(recipe, sources: list[_Source]) -> TokenizerInfo:
    sec = recipe.tokenizer
    if sec.train is None:
        return prepare_tokenizer(recipe, None, [], False)
    # Train on the first documents of every source, an equal part each.
    per = max(1, sec.train.max_docs // len(sources))
    texts: list[str] = []
    for s in sources:
        texts += training_texts(s.dataset, s.tcfg.input_columns(), per, sec.train.max_chars // len(sources), False)
    tok, path = train_cached_tokenizer(texts, sec.train.vocab_size, sec.train.cache_dir)
    card_id = "tokenizer/ (byte-level BPE trained on the mixture's sources by hfprep, bundled)"
    return TokenizerInfo(tok, path, card_id, None, path)


# ----------------------------------------------------------------------------------------------- the run


@dataclasses.dataclass
class MixtureRun:
    """What the mixture path hands back to :func:`hfprep.run.run_recipe` (results) and what it adds to the
    output (the ``source`` column, the card's mixture section and chart, the summary's ``mixture`` entry)."""

    recipe: Any
    spec: Any
    info: TokenizerInfo
    results: list[SplitResult]
    reports: list[SourceReport]
    total: int
    notes: list[str]
    source_names: list[str]
    hub_ids: list[str]

    # --- output hooks ----------------------------------------------------------------------------------------

    def features(self):
        return mixture_features(self.recipe)

    def output_tables(self, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
        """Add the ``source`` column (when asked) to the tables ``run_recipe`` writes."""
        if not self.recipe.source_column:
            return tables
        out = {}
        for r in self.results:
            ds = r.dataset
            col = ds.with_format("arrow")[:].column(SOURCE_COLUMN) if len(ds) else pa.chunked_array([], pa.list_(pa.int16()))
            out[r.name] = tables[r.name].append_column(SOURCE_COLUMN, col)
        return out

    def summary(self) -> dict[str, Any]:
        return {"tokens": self.total, "notes": self.notes, "sources": [r.as_dict() for r in self.reports]}

    def tokenize_configs(self) -> list[TokenizeConfig]:
        """Every source's tokenize config (what its documents look like, for the loss audit)."""
        return _source_configs(self.recipe)

    def write_chart(self, path: Path) -> None:
        shares_chart_png(self.reports, path)

    def card(self, text: str, with_chart: bool) -> str:
        """The card with the mixture section (before ``## Tokenizer``) and ``hfprep.mixture`` in its metadata."""
        meta = parse_card_metadata(text)
        end = text.find("\n---", 3)
        body = text[end + len("\n---") :].lstrip("\n")
        meta["source_datasets"] = list(dict.fromkeys(self.hub_ids)) or ["original"]
        hf = meta.setdefault("hfprep", {})
        hf["mixture"] = json.loads(json.dumps(self.summary()))
        if self.recipe.source_column and "dataset_info" in meta:
            rows = {r.name: r.out_stats.rows for r in self.results}
            sizes = {s["name"]: s.get("num_bytes", 0) for s in meta["dataset_info"].get("splits", [])}
            meta["dataset_info"] = dataset_info_yaml(self.features(), rows, sizes)
        if self.recipe.source_column:  # the column table names every column the data has
            row = next((ln for ln in body.splitlines() if ln.startswith("| `loss_mask` |")), None)
            if row is not None:
                body = body.replace(row, row + "\n| `source` | list of int16 | the mixture source of every token "
                                    "(its row in the mixture table, from 0); -1 on padding |", 1)
        section = self.card_section(with_chart)
        at = body.find("\n## Tokenizer")
        body = body[: at + 1] + section + "\n" + body[at + 1 :] if at >= 0 else body.rstrip("\n") + "\n\n" + section
        return "---\n" + dump_yaml(meta) + "---\n\n" + body

    def card_section(self, with_chart: bool) -> str:
        first = self.results[0].name
        lines = [
            "## Mixture",
            "",
            f"{len(self.reports)} sources, a budget of {self.total:,} tokens for `{first}`. Documents are chosen whole, by "
            "a seeded hash of their content (the same choice for any worker count or engine); a source whose budget "
            "exceeds its size is repeated in whole epochs"
            + (" (raw-document FIM draws each epoch anew)" if any(r.epochs > 1 for r in self.reports) else "")
            + ". Tokens chosen are counted before packing; share delivered is each source's part of the real tokens "
            "in the packed rows"
            + (", which the `source` column (source index per token, -1 on padding) lets you recount" if
               self.recipe.source_column else "")
            + ".",
            "",
            mixture_table(self.reports),
            "",
        ]
        lines += [f"Note: {n}." for n in self.notes] + ([""] if self.notes else [])
        if len(self.results) > 1:
            lines += ["Held-out split(s): every source's held-out documents, once each (budgets apply to "
                      f"`{first}` only).", ""]
        if with_chart:
            lines += [f"![Share of tokens per source: asked vs delivered](images/{CHART})", ""]
        return "\n".join(lines)


class _MixtureSpec:
    """What the card and the summary read from a source spec, for a mixture (its sources are in the table).

    ``paths`` lists every source's local files and folders: the run protects them from ``--overwrite`` and the
    card's recipe text shows them relative to the recipe, as for a single source."""

    kind = "hub"
    streaming = False
    max_rows = None
    root = None

    def __init__(self, names: list[str], descriptions: list[str], paths: list[str]) -> None:
        self.columns: dict[str, str] = {}
        self.hub_id = None
        self.revision = "per source, see the mixture table"
        self.paths = paths
        self._text = f"a mixture of {len(names)} sources: " + "; ".join(
            f"{n} ({d})" for n, d in zip(names, descriptions)
        )

    def describe(self) -> str:
        return self._text


def _card_description(spec: SourceSpec, recipe) -> str:
    """A source as the card shows it (no folder of this machine: paths relative to the recipe, or file names with
    their sha256), with the row rules the single-source card also names."""
    return (
        card_source(spec, recipe)
        + (f", first {spec.max_rows:,} rows" if spec.max_rows else "")
        + (f", columns renamed {spec.columns}" if spec.columns else "")
    )


def run_mixture_splits(recipe, engine: str, num_proc: int | None, log) -> MixtureRun:
    """Tokenize, choose, mix and pack every split of a mixture recipe (group + pack on ``engine``)."""
    if engine not in ("datasets", "ray"):
        raise ConfigError(f"unknown engine {engine!r}; choose 'datasets' or 'ray'")
    heldout = recipe.splits.heldout_fraction
    configs = _source_configs(recipe)
    sources: list[_Source] = []
    for i, (sec, tcfg) in enumerate(zip(recipe.sources, configs)):
        where = f"sources[{i}] ({sec.name!r})"
        spec = resolve_source(sec, tcfg.input_columns(), heldout)
        try:
            ds = load_source(spec)
            if spec.streaming:
                ds = _materialize(ds, spec, where)
        except DataError as e:
            raise type(e)(f"{where}: {e}") from None
        missing = [c for c in tcfg.input_columns() if c not in ds.column_names]
        if missing:
            raise DataError(
                f"{where}: strategy {tcfg.strategy!r} needs column(s) {missing}, but the source has {ds.column_names}; "
                f"set sources[{i}].columns (renames) or sources[{i}].tokenize"
            )
        redraws = tcfg.strategy == "pretrain" and tcfg.fim_rate > 0
        sources.append(_Source(i, sec.name, where, spec, tcfg, ds, redraws=redraws))
        log({"event": "source", "source": f"{sec.name}: {spec.describe()}"})
    info = _prepare_tokenizer(recipe, sources)
    log({"event": "tokenizer", "tokenizer": info.card_id, "vocab_size": vocab_size(info.tokenizer)})
    # The backend's exactness guard runs once for the whole mixture, on a sample of every source's texts.
    per = max(1, 256 // len(sources))
    samples = [sample_texts(s.dataset, s.tcfg.input_columns(), max_rows=per) for s in sources]
    sample = [t for group in itertools.zip_longest(*samples) for t in group if t is not None]
    backend, report = resolve_backend(info.tokenizer, recipe.tokenizer.backend, sample)
    plan = [(recipe.splits.train_name, "train"), (recipe.splits.heldout_name, "heldout")] if heldout > 0 else [
        (recipe.splits.train_name, "all")
    ]
    results: list[SplitResult] = []
    reports: list[SourceReport] = []
    total = 0
    notes: list[str] = []
    for n, (name, keep) in enumerate(plan):
        log({"event": "split", "split": name})
        r, split_reports, total_n, notes_n = _run_split(
            recipe, info, backend, sources, keep, n == 0, num_proc, engine, split_name=name
        )
        r.name = name
        r.backend_report = report
        results.append(r)
        if n == 0:
            reports, total, notes = split_reports, total_n, notes_n
    for note in notes:
        log({"event": "note", "note": note})
    local = [p for s in sources if s.spec.kind != "hub" for p in (*s.spec.paths, s.spec.root) if p]
    spec = _MixtureSpec([s.name for s in sources], [_card_description(s.spec, recipe) for s in sources], local)
    hub_ids = [s.spec.hub_id for s in sources if s.spec.kind == "hub" and s.spec.hub_id]
    return MixtureRun(recipe, spec, info, results, reports, total, notes, [s.name for s in sources], hub_ids)


def _tokenize(
    part, s: _Source, info: TokenizerInfo, backend, epoch: int, recipe, num_proc: int | None, split_name: str = ""
):
    tcfg = s.tcfg.model_copy(update={"fim_seed": s.tcfg.fim_seed + epoch}) if epoch else s.tcfg
    fn = _TokenizeSource(
        Tokenizer(info.tokenizer, tcfg, backend), s.index, s.tcfg.input_columns(), recipe.seed,
        recipe.packing.num_reduce_chunks,
    )
    if len(part) == 0:
        return None
    return part.map(
        fn, batched=True, batch_size=1000, with_indices=True, remove_columns=part.column_names, num_proc=num_proc,
        features=_tokenized_features(), desc=f"tokenize {split_name} ({s.name}" + (f", epoch {epoch})" if epoch else ")"),
    )


def _column(ds, name: str) -> pa.ChunkedArray:
    """One column of a tokenized source as Arrow (zero-copy over its memory-mapped cache file)."""
    return ds.select_columns([name]).with_format("arrow")[:].column(name)


def _lengths(ds) -> np.ndarray:
    return _list_lengths(_column(ds, "input_ids"))


def _run_split(
    recipe, info, backend, sources: list[_Source], keep: str, budgeted: bool, num_proc: int | None, engine: str,
    split_name: str = "",
):
    epochs_of: list[dict[int, Any]] = []
    avail_docs, avail_tokens = [], []
    with keep_tokenizers_parallelism():
        for s in sources:
            part = select_split(s.dataset, s.spec.for_split(keep), num_proc=num_proc)
            tok0 = _tokenize(part, s, info, backend, 0, recipe, num_proc, split_name)
            epochs_of.append({0: tok0, "part": part})
            avail_docs.append(len(tok0) if tok0 is not None else 0)
            avail_tokens.append(int(_lengths(tok0).sum()) if tok0 is not None else 0)
        if budgeted:
            for s, a in zip(sources, avail_tokens):
                if a == 0:
                    raise DataError(f"{s.where}: the source has no tokens after tokenization; check its rows")
            secs = recipe.sources
            plan = plan_budgets([x.name for x in secs], [x.weight for x in secs], [x.tokens for x in secs],
                                avail_tokens, recipe.tokens)
            budgets, total, notes = plan.budgets, plan.total, plan.notes
        else:
            budgets, total, notes = avail_tokens, sum(avail_tokens), []
        selections: list[Selection] = []
        for s, budget, cache in zip(sources, budgets, epochs_of):
            if cache[0] is None:
                selections.append(Selection([], 0, 0))
                continue
            hashes = _column(cache[0], HASH).to_numpy()

            def lengths(e: int, s=s, cache=cache) -> np.ndarray:
                if e not in cache:
                    cache[e] = (
                        _tokenize(cache["part"], s, info, backend, e, recipe, num_proc, split_name)
                        if s.redraws
                        else cache[0]
                    )
                tok = cache[e]
                if len(tok) != len(cache[0]):
                    raise DataError(f"{s.where}: epoch {e} tokenized to {len(tok)} documents, not {len(cache[0])}")
                return _lengths(tok)

            max_epochs = recipe.max_epochs if budgeted else 1
            selections.append(choose_documents(hashes, lengths, budget, max_epochs, s.where))
    # Every chosen document of every source and epoch, in the mixing order: the tokenized sources (an epoch that
    # repeats a source repeats its dataset) side by side, and the chosen rows' positions in mixing order. The
    # reduce reads the rows in that order (MixtureTransform.group_order): no mixed copy is written.
    parts, glob, hashes_l, epochs_l, sources_l, pos_l = [], [], [], [], [], []
    offset = 0
    for s, sel, cache in zip(sources, selections, epochs_of):
        for e, positions in enumerate(sel.epochs):
            tok = cache[e]
            parts.append(tok)
            glob.append(offset + positions)
            hashes_l.append(_column(tok, HASH).to_numpy()[positions])
            epochs_l.append(np.full(len(positions), e, np.int64))
            sources_l.append(np.full(len(positions), s.index, np.int64))
            pos_l.append(positions)
            offset += len(tok)
    transform = MixtureTransform(
        transform_config(recipe, info.name_or_path), info.tokenizer, len(sources), recipe.source_column
    )
    transform.progress_split = split_name or None  # "pack train", as on the single-source path
    transform.keep_documents = recipe.output.documents
    if parts:
        cat = lambda xs: np.concatenate(xs)  # noqa: E731
        order = mix_order(cat(hashes_l), cat(epochs_l), cat(sources_l), cat(pos_l))
        rows = cat(glob)[order]
        side_by_side = concatenate_datasets(parts)
        if engine == "ray":
            out = _reduce_on_ray(transform, side_by_side.select(rows), recipe)
        else:
            transform.rows_in = len(rows)
            transform.mix_rows = rows
            out = transform.reduce(side_by_side, num_proc=num_proc)
    else:
        out = transform.empty_result()
    stats, bins = split_stats_from(transform.stats)
    counts = pop_source_counts(stats, len(sources))
    result = SplitResult(keep, out, stats, bins or None, transform.rows_in, documents=transform.last_documents)
    reports = [
        packed_report(
            SourceReport(
                name=s.name,
                source=_source_id(s.spec),
                docs_available=avail_docs[s.index],
                tokens_available=avail_tokens[s.index],
                docs_chosen=sel.docs,
                tokens_chosen=sel.tokens,
                epochs=round(sel.passes, 4),
                share_asked=round(budgets[s.index] / total, 6) if total else 0.0,
            ),
            counts, s.index,
        )
        for s, sel in zip(sources, selections)
    ]
    return result, reports, total, notes


def pop_source_counts(stats: dict[str, Any], num_sources: int) -> tuple[list[int], list[int], list[int]]:
    """The per-source token counts :class:`MixtureTransform` leaves in a split's stats (written, dropped whole,
    cut), taken out of them: ``(out, dropped, cut)``, one entry per source."""
    return tuple(  # type: ignore[return-value]
        [int(stats.pop(f"{prefix}{i}", 0)) for i in range(num_sources)]
        for prefix in (MIX_OUT_PREFIX, MIX_DROPPED_PREFIX, MIX_CUT_PREFIX)
    )


def packed_report(report: SourceReport, counts: tuple[list[int], list[int], list[int]], index: int) -> SourceReport:
    """``report`` (what was chosen) with what packing made of it: tokens out, share delivered, tokens lost."""
    outs, dropped, cut = counts
    total_out = sum(outs)
    return dataclasses.replace(
        report,
        tokens_out=outs[index],
        share_delivered=round(outs[index] / total_out, 6) if total_out else 0.0,
        tokens_lost=report.tokens_chosen - outs[index],
        lost_dropped=dropped[index],
        lost_cut=cut[index],
    )


def mixture_features(recipe) -> Features:
    """The packed rows' features of a mixture recipe: the token columns, and ``source`` when the recipe asks."""
    feats = tokenized_features()
    if recipe.source_column:
        feats[SOURCE_COLUMN] = List(Value("int16"))
    return feats


def repacked_mixture(recipe, source_meta: dict[str, Any], results: list[SplitResult]) -> MixtureRun:
    """The mixture part of a repacked dataset (``hfprep repack``): the source card's mixture table (what was
    chosen) with the new packing's per-source counts (first split), taken out of every split's stats."""
    mixture = hfprep_block(source_meta)["mixture"]
    chosen = [SourceReport(**{k: v for k, v in r.items() if k in SourceReport.__dataclass_fields__})
              for r in mixture["sources"]]
    counts = [pop_source_counts(r.pack_stats, len(chosen)) for r in results]
    reports = [packed_report(r, counts[0], i) for i, r in enumerate(chosen)]
    hub_ids = [d for d in source_meta.get("source_datasets") or [] if d != "original"]
    return MixtureRun(recipe, None, None, results, reports, int(mixture["tokens"]), list(mixture.get("notes") or []),
                      [r.name for r in chosen], hub_ids)


def _reduce_on_ray(transform: MixtureTransform, mixed, recipe):
    mixed = mixed.flatten_indices().select_columns(["input_ids", "position_ids", "loss_mask", KEY_COLUMN, SOURCE_ID])
    return run_on_ray(transform, mixed, address=recipe.engine.address, num_cpus=recipe.engine.num_cpus)


def _source_id(spec: SourceSpec) -> str:
    if spec.kind == "hub":
        return f"{spec.hub_id}@{spec.revision or 'main (not pinned)'}" + (f" ({spec.config_name})" if spec.config_name else "")
    digest = source_revision(spec).split(" over ")[0].removeprefix("sha256:")
    return f"{len(spec.paths)} local file(s), sha256 {digest[:12]}"


# ----------------------------------------------------------------------------------------------- chart


def shares_chart_png(reports: list[SourceReport], path: str | Path) -> None:
    """Two stacked bars (share asked, share delivered), one colour per source; deterministic bytes."""
    plt, fig, ax = _figure()
    bottoms = np.zeros(2)
    for k, r in enumerate(reports):
        vals = np.array([r.share_asked, r.share_delivered]) * 100
        ax.bar([0, 1], vals, bottom=bottoms, width=0.5, color=_COLORS[k % len(_COLORS)], label=r.name)
        for x in (0, 1):
            if vals[x] >= 4:
                ax.text(x, bottoms[x] + vals[x] / 2, f"{vals[x]:.1f}%", ha="center", va="center", color="white",
                        fontsize=8)
        bottoms += vals
    ax.set_xticks([0, 1], ["asked", "delivered"])
    ax.set_xlim(-0.6, 2.2)
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of tokens (%)")
    ax.set_title("Mixture: share of tokens per source")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], frameon=False, loc="center right")  # same top-to-bottom order as the bars
    _save(plt, fig, path)
