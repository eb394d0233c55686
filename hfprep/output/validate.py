"""Check a prepared dataset folder: recompute the row invariants and the card's statistics from the Parquet shards.

Checked, per row (vectorised over each record batch):

* schema: exactly ``input_ids`` list<uint32>, ``position_ids`` list<uint32>, ``loss_mask`` list<bool>, with
  datasets' feature metadata;
* lengths: the three lists have the same length, equal to the card's ``seq_len`` (at most ``seq_len`` and not
  empty when the card records ``packing_kwargs: {pad: false}``: padding-free rows are shorter by design);
* positions: 0 at the row start; every other position is either 0 (a segment starts) or previous + 1;
* ids below the tokenizer's vocabulary size;
* padding: found by the row contract's rule (:func:`hfprep.schema.padding_mask`: the trailing run of pad-id tokens
  at position 0 with no loss) in padded datasets only (``dense`` and ``pad: false`` write none); a row of nothing
  but padding is a violation;
* the card: shard names complete (``-XXXXX-of-YYYYY``), the ``configs`` splits present, and rows, tokens, padding,
  loss tokens and segments per split equal to what the card says;
* the loss audit (:mod:`hfprep.output.audit`), per split: documents with no loss or (SFT) loss on their context,
  assistant turns without loss on their content or end-of-turn token, documents without their separator or FIM
  sentinels, rows with no loss; one line per violated check, with its count and first row/segment.
* the ``documents`` config, when there is one (:mod:`hfprep.output.documents`): its shards, columns and dtypes,
  equal non-empty lists, ids below the vocabulary, keys that never decrease within a split (the order the packer
  reads them), and a document and token count per split equal to the card's ``docs_in`` / ``tokens_in``.

Example:
    >>> report = validate_folder("out/quickstart")  # doctest: +SKIP
    >>> report.ok, report.violations[:1]  # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..pack.keys import batch_keys
from ..schema import (
    DOCUMENT_ARROW_TYPES,
    DOCUMENT_COLUMNS,
    DOCUMENT_SOURCE_TYPE,
    ROW_ARROW_TYPES,
    ROW_FEATURES_SPEC,
    SOURCE_COLUMN,
    RowSegments,
    output_is_padded,
    padding_mask,
    row_segments,
    table_to_flat,
)
from .audit import AuditResult, LossAudit
from .card import hfprep_block, read_card_metadata
from .documents import DOCUMENTS_CONFIG
from .layout import CARD_NAME, DATA_DIR, DOCUMENTS_DIR, SHARD_RE
from .mixture_report import check_mixture_card, source_column_counts

EXPECTED_TYPES = ROW_ARROW_TYPES
OPTIONAL_TYPES = {"source": pa.list_(pa.int16())}  # a mixture's per-token source index (hfprep.mixture)
STAT_KEYS = ("rows", "tokens", "pad_tokens", "loss_tokens", "segments")


@dataclasses.dataclass
class SplitStats:
    """What a split holds: rows, real tokens, padding, tokens with loss, segments (documents or their pieces)."""

    rows: int = 0
    tokens: int = 0
    pad_tokens: int = 0
    loss_tokens: int = 0
    segments: int = 0

    def add(self, other: SplitStats) -> None:
        for k in STAT_KEYS:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    @property
    def fill_ratio(self) -> float:
        slots = self.tokens + self.pad_tokens
        return self.tokens / slots if slots else 0.0

    def as_dict(self) -> dict[str, int | float]:
        d: dict[str, int | float] = {k: getattr(self, k) for k in STAT_KEYS}
        d["fill_ratio"] = round(self.fill_ratio, 6)
        return d


def batch_stats(
    table: pa.Table, pad_token_id: int | None, padded: bool
) -> tuple[SplitStats, np.ndarray, np.ndarray]:
    """Stats of packed rows, plus each row's fill (real tokens / length) and every segment's length
    (:func:`hfprep.schema.row_segments`)."""
    ids, pos, mask, offsets = table_to_flat(table)
    return segment_stats(row_segments(ids, pos, mask, offsets, pad_token_id, padded))


def segment_stats(r: RowSegments) -> tuple[SplitStats, np.ndarray, np.ndarray]:
    """:func:`batch_stats` of rows already measured by :func:`~hfprep.schema.row_segments`."""
    lengths = r.row_len
    fill = np.divide(r.real_per_row, lengths, out=np.zeros(len(lengths)), where=lengths > 0)
    stats = SplitStats(
        rows=len(lengths),
        tokens=int(r.real_per_row.sum()),
        pad_tokens=int(r.pad_per_row.sum()),
        loss_tokens=r.loss_tokens,
        segments=len(r.seg_len),
    )
    return stats, fill, r.seg_len


def check_batch(
    table: pa.Table,
    *,
    seq_len: int | None,
    pad_token_id: int | None,
    padded: bool,
    vocab_size: int | None,
    where: str,
    row_base: int,
    limit: int,
    variable_length: bool = False,
) -> list[str]:
    """Row invariants of one record batch; returns up to ``limit`` violation lines (``where row N: ...``).

    ``variable_length``: rows may be shorter than ``seq_len`` (padding-free packing), never longer or empty.
    """
    out: list[str] = []
    cols = {n: table.column(n).combine_chunks() for n in ROW_FEATURES_SPEC}
    lens = {n: np.asarray(pa.compute.list_value_length(c).to_numpy(zero_copy_only=False)) for n, c in cols.items()}
    bad_len = np.flatnonzero((lens["input_ids"] != lens["position_ids"]) | (lens["input_ids"] != lens["loss_mask"]))
    for r in bad_len[:limit]:
        out.append(f"{where} row {row_base + r}: input_ids/position_ids/loss_mask lengths differ "
                   f"({lens['input_ids'][r]}/{lens['position_ids'][r]}/{lens['loss_mask'][r]})")
    if len(bad_len):
        return out  # the flat checks below need aligned lists
    if seq_len is not None and variable_length:
        for r in np.flatnonzero((lens["input_ids"] > seq_len) | (lens["input_ids"] == 0))[:limit]:
            out.append(f"{where} row {row_base + r}: length {lens['input_ids'][r]} is not in 1..seq_len {seq_len}")
    elif seq_len is not None:
        for r in np.flatnonzero(lens["input_ids"] != seq_len)[:limit]:
            out.append(f"{where} row {row_base + r}: length {lens['input_ids'][r]} != seq_len {seq_len}")
    ids, pos, mask, offsets = table_to_flat(table)
    pos64 = pos.astype(np.int64)
    starts = offsets[:-1][np.diff(offsets) > 0]
    for r in np.flatnonzero(pos64[starts] != 0)[:limit]:
        row = int(np.searchsorted(offsets, starts[r], side="right") - 1)
        out.append(f"{where} row {row_base + row}: position_ids start at {pos64[starts[r]]}, not 0")
    prev_ok = np.ones(len(pos64), dtype=np.bool_)
    if len(pos64) > 1:
        prev_ok[1:] = (pos64[1:] == 0) | (pos64[1:] == pos64[:-1] + 1)
    prev_ok[starts] = True
    for i in np.flatnonzero(~prev_ok)[:limit]:
        row = int(np.searchsorted(offsets, i, side="right") - 1)
        out.append(
            f"{where} row {row_base + row}, token {i - offsets[row]}: position {pos64[i]} after {pos64[i - 1]} "
            "(positions must restart at 0 or count up by 1)"
        )
    if vocab_size is not None:
        for i in np.flatnonzero(ids >= vocab_size)[:limit]:
            row = int(np.searchsorted(offsets, i, side="right") - 1)
            out.append(f"{where} row {row_base + row}, token {i - offsets[row]}: id {ids[i]} >= vocab size {vocab_size}")
    if padded:
        pad = padding_mask(ids, pos, mask, offsets, pad_token_id)
        row_len = np.diff(offsets)
        real = np.bincount(np.repeat(np.arange(len(row_len)), row_len)[~pad], minlength=len(row_len))
        for r in np.flatnonzero((real == 0) & (row_len > 0))[:limit]:
            out.append(f"{where} row {row_base + r}: the row is all padding (pad id {pad_token_id}, no loss)")
    return out[:limit]


@dataclasses.dataclass
class ValidationReport:
    """Result of :func:`validate_folder`: ``violations`` is empty when the folder is valid."""

    folder: str
    violations: list[str]
    stats: dict[str, dict[str, int | float]]
    truncated: bool = False
    """True when the list was cut at ``max_violations``: checking stopped there and more may exist."""
    audits: dict[str, AuditResult] = dataclasses.field(default_factory=dict)
    """The loss audit of every split (:mod:`hfprep.output.audit`); its violations are in ``violations`` too."""

    @property
    def ok(self) -> bool:
        return not self.violations


def _check_schema(pf: pq.ParquetFile, where: str) -> list[str]:
    out = []
    schema = pf.schema_arrow
    names = [f.name for f in schema]
    if sorted(n for n in names if n not in OPTIONAL_TYPES) != sorted(EXPECTED_TYPES):
        out.append(f"{where}: columns {names}, expected {list(EXPECTED_TYPES)}")
        return out
    for name, typ in OPTIONAL_TYPES.items():
        if name in names and not schema.field(name).type.equals(typ):
            out.append(f"{where}: column {name!r} has type {schema.field(name).type}, expected {typ}")
    for name, typ in EXPECTED_TYPES.items():
        got = schema.field(name).type
        if not got.equals(typ) and not (pa.types.is_list(got) and got.value_type.equals(typ.value_type)):
            out.append(f"{where}: column {name!r} has type {got}, expected {typ}")
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta is None:
        out.append(f"{where}: no datasets feature metadata (load_dataset would infer int32/int64 ids)")
    else:
        feats = json.loads(meta).get("info", {}).get("features", {})
        for name, dtype in ROW_FEATURES_SPEC.items():
            inner = feats.get(name, {}).get("feature", {}).get("dtype")
            if inner != dtype:
                out.append(f"{where}: feature {name!r} stored as {inner!r} in the metadata, expected {dtype!r}")
    return out


def _shards(folder: Path, data_dir: str = DATA_DIR) -> tuple[dict[str, list[Path]], list[str]]:
    problems: list[str] = []
    by_split: dict[str, list[tuple[int, int, Path]]] = {}
    data = folder / data_dir
    for p in sorted(data.glob("*.parquet")) if data.is_dir() else []:
        m = SHARD_RE.match(p.name)
        if not m:
            problems.append(f"{data_dir}/{p.name}: not named <split>-XXXXX-of-YYYYY.parquet")
            continue
        by_split.setdefault(m["split"], []).append((int(m["index"]), int(m["count"]), p))
    out: dict[str, list[Path]] = {}
    for split, items in by_split.items():
        counts = {n for _, n, _ in items}
        idx = sorted(i for i, _, _ in items)
        if len(counts) != 1:
            problems.append(f"split {split!r}: shards disagree on their count (-of-{sorted(counts)}); re-create the folder")
        else:
            n = next(iter(counts))
            missing = [f"{data_dir}/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n) if i not in idx]
            extra = [i for i in idx if i >= n]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                problems.append(f"split {split!r}: missing shard file(s) {shown}")
            if extra:
                problems.append(f"split {split!r}: shard index(es) {extra} beyond the count {n}")
        out[split] = [p for _, _, p in sorted(items)]
    return out, problems



def _parquet_or_report(path: Path, where: str, problems: list[str]) -> pq.ParquetFile | None:
    """``path`` opened, or None with a line in ``problems`` for a truncated or foreign file (the check goes on)."""
    try:
        return pq.ParquetFile(path)
    except Exception as e:
        problems.append(f"{where}: unreadable Parquet ({str(e).splitlines()[0]})")
        return None


def validate_folder(folder: str | os.PathLike, max_violations: int = 50) -> ValidationReport:
    """Recompute every invariant of a prepared dataset folder; see the module docstring for the list."""
    root = Path(folder)
    violations: list[str] = []
    if not root.is_dir():
        return ValidationReport(str(folder), [f"{folder}: not a folder"], {})
    meta: dict[str, Any] = {}
    if not (root / CARD_NAME).is_file():
        violations.append(f"{CARD_NAME}: missing (no dataset card)")
    else:
        try:
            meta = read_card_metadata(root / CARD_NAME)
        except ValueError as e:
            violations.append(f"{CARD_NAME}: {e}")
    hf = hfprep_block(meta)
    tok = hf.get("tokenizer", {}) or {}
    seq_len = hf.get("seq_len")
    pad_id = tok.get("pad_token_id")
    vocab = tok.get("vocab_size")
    packing_kwargs = hf.get("packing_kwargs") or {}
    padded = output_is_padded(hf.get("packing"), packing_kwargs)
    variable_length = hf.get("packing") != "dense" and not padded
    shards, problems = _shards(root)
    violations.extend(problems)
    if not shards:
        violations.append(f"{DATA_DIR}/: no Parquet shards")
    config_splits = _config_splits(meta, "default")
    for split in config_splits:
        if split not in shards:
            violations.append(f"{CARD_NAME}: configs lists split {split!r} but {DATA_DIR}/ has no shard for it")
    all_stats: dict[str, dict[str, int | float]] = {}
    audits: dict[str, AuditResult] = {}
    cut = False
    for split, paths in shards.items():
        total = SplitStats()
        audit = LossAudit.from_card(hf)
        row_base = 0
        source_tokens = None
        for p in paths:
            where = f"{DATA_DIR}/{p.name}"
            pf = _parquet_or_report(p, where, violations)
            if pf is None:
                continue
            schema_problems = _check_schema(pf, where)
            violations.extend(schema_problems)
            if schema_problems:
                continue
            for batch in pf.iter_batches(batch_size=1024):
                table = pa.Table.from_batches([batch])
                room = max_violations - len(violations)
                if room > 0:
                    found = check_batch(
                        table, seq_len=seq_len, pad_token_id=pad_id, padded=padded, vocab_size=vocab,
                        where=where, row_base=row_base, limit=room + 1, variable_length=variable_length,
                    )
                    cut = cut or len(found) > room
                    violations.extend(found[:room])
                else:
                    cut = True  # the row checks stopped at the limit
                if _aligned(table):  # else check_batch reported it; the stats and the audit need aligned lists
                    s, _, _ = batch_stats(table, pad_id, padded)
                    total.add(s)
                    audit.add(table, row_base, where)
                if "source" in table.column_names:
                    counts, problems = source_column_counts(table, pad_id, padded, where, row_base)
                    violations.extend(problems[: max(0, max_violations - len(violations))])
                    source_tokens = source_tokens + counts if source_tokens is not None else counts
                row_base += table.num_rows
        all_stats[split] = total.as_dict()
        violations.extend(_check_card_stats(meta, split, total))
        card_stats = (hf.get("stats") or {}).get(split) or {}
        audits[split] = audit.result({**card_stats, "segments": total.segments})
        violations.extend(audits[split].lines(split))
        if source_tokens is not None and split == next(iter(config_splits or shards)):
            violations.extend(check_mixture_card(hf.get("mixture"), source_tokens))
    documents_config = (hf.get("documents") or {}).get("config_name", DOCUMENTS_CONFIG)
    if (root / DOCUMENTS_DIR).is_dir() or _config_splits(meta, documents_config):
        violations.extend(
            _check_documents(root, meta, documents_config, list(shards), max(0, max_violations - len(violations)) + 1)
        )
    cut = cut or len(violations) > max_violations
    return ValidationReport(str(folder), violations[:max_violations], all_stats, truncated=cut, audits=audits)


def _check_documents(root: Path, meta: dict[str, Any], config: str, data_splits: list[str], limit: int) -> list[str]:
    """The documents config (:mod:`hfprep.output.documents`): shard names, the row contract (columns, dtypes, equal
    non-empty lists, ids below the vocabulary), the order the packer reads (keys never decrease within a split)
    and the card's document and token counts (``docs_in`` / ``tokens_in`` of each split)."""
    hf = meta.get("hfprep") or {}
    vocab = (hf.get("tokenizer") or {}).get("vocab_size")
    num_keys = hf.get("num_reduce_chunks")
    shards, out = _shards(root, DOCUMENTS_DIR)
    listed = _config_splits(meta, config)
    for split in listed:
        if split not in shards:
            out.append(f"{CARD_NAME}: config {config!r} lists split {split!r} but {DOCUMENTS_DIR}/ has no shard for it")
    if shards and not listed:
        out.append(f"{CARD_NAME}: {DOCUMENTS_DIR}/ holds shards but configs has no {config!r} entry for them")
    for split in data_splits:
        if split not in shards:
            out.append(f"{DOCUMENTS_DIR}/: no documents for split {split!r} (every packed split has its documents)")
    for split, paths in shards.items():
        docs = tokens = 0
        last_key = -1
        for p in paths:
            where = f"{DOCUMENTS_DIR}/{p.name}"
            pf = _parquet_or_report(p, where, out)
            if pf is None:
                continue
            problems = _check_document_schema(pf.schema_arrow, where)
            out.extend(problems)
            if problems:
                continue
            for batch in pf.iter_batches(batch_size=1024):
                found, ids, offsets = _check_document_batch(pa.Table.from_batches([batch]), vocab, where, docs)
                out.extend(found)
                if ids is not None and num_keys:
                    keys = batch_keys(ids, offsets, int(num_keys))
                    down = np.flatnonzero(np.diff(np.concatenate([[last_key], keys])) < 0)
                    if len(down):
                        out.append(
                            f"{where} row {docs + int(down[0])}: key {keys[down[0]]} after key "
                            f"{last_key if down[0] == 0 else keys[down[0] - 1]}; documents must be in the order the "
                            "packer reads them (ascending key, input order inside a key): re-create the folder"
                        )
                    last_key = int(keys[-1]) if len(keys) else last_key
                docs += batch.num_rows
                tokens += int(offsets[-1]) if offsets is not None else 0
                if len(out) >= limit:
                    return out
        card = (hf.get("stats") or {}).get(split) or {}
        for key, got in (("docs_in", docs), ("tokens_in", tokens)):
            if key in card and int(card[key]) != got:
                out.append(f"{CARD_NAME}: split {split!r} {key} = {card[key]} in the card, {got} in {DOCUMENTS_DIR}/")
    return out


def _check_document_schema(schema: pa.Schema, where: str) -> list[str]:
    names = [f.name for f in schema]
    if sorted(n for n in names if n != SOURCE_COLUMN) != sorted(DOCUMENT_ARROW_TYPES):
        return [f"{where}: columns {names}, expected {list(DOCUMENT_ARROW_TYPES)} (and {SOURCE_COLUMN!r} for a mixture)"]
    out = []
    for name, typ in DOCUMENT_ARROW_TYPES.items():
        got = schema.field(name).type
        if not (pa.types.is_list(got) and got.value_type.equals(typ.value_type)):
            out.append(f"{where}: column {name!r} has type {got}, expected {typ}")
    if SOURCE_COLUMN in names and not schema.field(SOURCE_COLUMN).type.equals(DOCUMENT_SOURCE_TYPE):
        out.append(f"{where}: column {SOURCE_COLUMN!r} has type {schema.field(SOURCE_COLUMN).type}, "
                   f"expected {DOCUMENT_SOURCE_TYPE}")
    if (schema.metadata or {}).get(b"huggingface") is None:
        out.append(f"{where}: no datasets feature metadata (load_dataset would infer int32/int64 ids)")
    return out


def _check_document_batch(
    table: pa.Table, vocab: int | None, where: str, row_base: int
) -> tuple[list[str], np.ndarray | None, np.ndarray | None]:
    """Row contract of one batch of documents; returns the violations and the flat ids with their offsets (None
    when the lists are not aligned)."""
    out = []
    lens = {n: pa.compute.list_value_length(table.column(n)).to_numpy(zero_copy_only=False) for n in DOCUMENT_COLUMNS}
    bad = np.flatnonzero(lens["input_ids"] != lens["loss_mask"])
    for r in bad[:5]:
        out.append(f"{where} row {row_base + r}: input_ids/loss_mask lengths differ "
                   f"({lens['input_ids'][r]}/{lens['loss_mask'][r]})")
    if len(bad):
        return out, None, None
    for r in np.flatnonzero(lens["input_ids"] == 0)[:5]:
        out.append(f"{where} row {row_base + r}: an empty document")
    col = table.column("input_ids")
    ids = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks] or [np.zeros(0, np.uint32)])
    offsets = np.zeros(len(lens["input_ids"]) + 1, dtype=np.int64)
    np.cumsum(lens["input_ids"], out=offsets[1:])
    if vocab is not None:
        for i in np.flatnonzero(ids >= vocab)[:5]:
            row = int(np.searchsorted(offsets, i, side="right") - 1)
            out.append(f"{where} row {row_base + row}, token {i - offsets[row]}: id {ids[i]} >= vocab size {vocab}")
    return out, ids.astype(np.uint32, copy=False), offsets


def _aligned(table: pa.Table) -> bool:
    n = [pa.compute.list_value_length(table.column(c)) for c in ROW_FEATURES_SPEC]
    return all(x.equals(n[0]) for x in n[1:])


def _config_splits(meta: dict[str, Any], config: str) -> list[str]:
    """The splits the card's ``configs`` entry ``config`` lists."""
    out = []
    for cfg in meta.get("configs", []) or []:
        if not isinstance(cfg, dict) or str(cfg.get("config_name", "default")) != config:
            continue
        for df in cfg.get("data_files", []) or []:
            if isinstance(df, dict) and "split" in df:
                out.append(df["split"])
    return out


def _check_card_stats(meta: dict[str, Any], split: str, got: SplitStats) -> list[str]:
    out = []
    card_stats = (hfprep_block(meta).get("stats") or {}).get(split)
    if card_stats is None:
        return [f"{CARD_NAME}: no hfprep.stats for split {split!r}"] if meta else []
    for k in STAT_KEYS:
        if k in card_stats and int(card_stats[k]) != getattr(got, k):
            out.append(f"{CARD_NAME}: split {split!r} {k} = {card_stats[k]} in the card, {getattr(got, k)} in the data")
    for s in ((meta.get("dataset_info") or {}).get("splits")) or []:
        if s.get("name") == split and s.get("num_examples") != got.rows:
            out.append(f"{CARD_NAME}: dataset_info says {s.get('num_examples')} rows in {split!r}, data has {got.rows}")
    return out
