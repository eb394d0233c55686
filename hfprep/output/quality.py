"""Packing quality report: how full the rows are, how many segments they hold, and what was lost and why.

Works on the packed rows alone (a ``datasets.Dataset`` or a ``pyarrow.Table`` with ``input_ids``,
``position_ids``, ``loss_mask``), plus the packer's stats dict when there is one. Segments are found the way
training finds them: a segment starts at position 0 (and at the start of a row). Padding is found by the row
contract's rule (:func:`hfprep.schema.padding_mask`: the trailing run of tokens with position 0 and ``loss_mask``
False, and the pad id when ``pad_token_id`` is given); it is one pad region, not many one-token segments. Pass
``padded=False`` for outputs that have no padding (``dense``, ``bfd`` with ``pad: false``).

Example:
    >>> import pyarrow as pa
    >>> t = pa.table({"input_ids": [[5, 6, 7, 0]], "position_ids": [[0, 1, 0, 0]],
    ...               "loss_mask": [[True, True, True, False]]})
    >>> r = packing_report(t, seq_len=4)
    >>> r["fill_ratio"], r["segments"]["per_row_mean"], r["segment_lengths"]["max"]
    (0.75, 2.0, 2)
    >>> print(format_report(r).splitlines()[0])
    rows 1 x seq_len 4: 3 tokens + 1 pad, fill 0.7500
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from ..datasets_internals import arrow_table
from ..errors import DataError
from ..schema import RowSegments, row_segments, table_to_flat

REPORT_BATCH_TOKENS = 2**18
"""Tokens measured at once (a few int64 temporaries each): rows per batch are this over ``seq_len``, so the report
holds the same memory at any row length (8,192 rows of 8,192 tokens took gigabytes)."""


def histogram_edges(seq_len: int) -> list[int]:
    """Fixed segment-length bins: powers of two ``1, 2, 4, ...`` up to ``seq_len`` (last bin ends at ``seq_len``).

    Example:
        >>> histogram_edges(10)
        [1, 2, 4, 8, 11]
    """
    edges = [1]
    while edges[-1] * 2 <= seq_len:
        edges.append(edges[-1] * 2)
    if edges[-1] <= seq_len:
        edges.append(seq_len + 1)
    return edges


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, Dataset):
        return arrow_table(data)
    raise DataError(f"packing_report needs a datasets.Dataset or a pyarrow.Table, got {type(data).__name__}")


def _flat(column: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=dtype)


def _row_offsets(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.nan_to_num(lengths).astype(np.int64), out=offsets[1:])
    return offsets


def packing_report(
    dataset_or_table: Any,
    seq_len: int,
    stats: Mapping[str, Any] | None = None,
    *,
    pad_token_id: int | None = None,
    padded: bool | None = None,
) -> dict[str, Any]:
    """Measure the packed rows and combine with the packer's stats into one JSON-able dict.

    Args:
        dataset_or_table: packed rows (``datasets.Dataset`` or ``pyarrow.Table``).
        seq_len: the packing length (fill is measured against ``rows * seq_len``).
        stats: the packer's stats dict (``PackStats.as_dict()`` or ``PrepareForTrainingTransform.stats``).
        pad_token_id: if given, a pad token must also carry this id.
        padded: ``False`` when the packing writes no padding (then no token is padding); otherwise padding is
            found by :func:`hfprep.schema.padding_mask`.

    Returns keys ``rows``, ``seq_len``, ``tokens`` (real), ``pad_tokens``, ``fill_ratio`` (real tokens /
    ``rows * seq_len``), ``padded`` (every row exactly ``seq_len`` long), ``loss_tokens``, ``segments``
    (``total``, ``per_row_mean/min/max``), ``segment_lengths`` (``mean/min/max`` and ``histogram``: fixed
    power-of-two bins with ``lo``, ``hi`` (exclusive), ``count``, ``tokens``), ``rows_over_seq_len``, and
    ``losses`` (by reason, from ``stats``).

    Example:
        >>> import pyarrow as pa
        >>> t = pa.table({"input_ids": [[1, 2]], "position_ids": [[0, 1]], "loss_mask": [[True, True]]})
        >>> packing_report(t, 2, {"tokens_in": 5, "tokens_dropped": 3, "docs_dropped": 1})["losses"]["dropped"]
        {'docs': 1, 'tokens': 3}
    """
    if not isinstance(seq_len, int | np.integer) or seq_len < 1:
        raise DataError(f"packing_report: seq_len must be a positive integer, got {seq_len!r}")
    table = _as_table(dataset_or_table)
    missing = [c for c in ("input_ids", "position_ids", "loss_mask") if c not in table.column_names]
    if missing:
        raise DataError(f"packing_report: packed rows lack column(s) {missing}; columns are {table.column_names}")
    builder = PackingReportBuilder(int(seq_len), pad_token_id=pad_token_id, padded=padded)
    batch_rows = max(1, REPORT_BATCH_TOKENS // int(seq_len))  # bounded memory whatever the row length
    for start in range(0, table.num_rows, batch_rows):
        builder.add(table.slice(start, batch_rows))
    return builder.report(stats)


class PackingReportBuilder:
    """:func:`packing_report` fed batch by batch (e.g. each row group as it is written): the same dict at the end,
    whatever the batches.

    Example:
        >>> import pyarrow as pa
        >>> b = PackingReportBuilder(2)
        >>> b.add(pa.table({"input_ids": [[1, 2]], "position_ids": [[0, 0]], "loss_mask": [[True, True]]}))
        >>> b.report()["segments"]["total"]
        2
    """

    def __init__(self, seq_len: int, *, pad_token_id: int | None = None, padded: bool | None = None) -> None:
        self.seq_len = seq_len
        self.pad_token_id = pad_token_id
        self.has_padding = padded
        self.edges = np.array(histogram_edges(seq_len), dtype=np.int64)
        self.hist_count = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.hist_tokens = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.rows = self.tokens_all = self.pad_tokens = self.loss_tokens = self.n_segments = self.over = 0
        self.seg_min: int | None = None
        self.seg_max = 0
        self.spr_min: int | None = None
        self.spr_max = 0
        self.padded = True  # the report's own key: every row exactly seq_len long

    def add(self, table: pa.Table) -> None:
        """Measure one batch of packed rows (``input_ids``, ``position_ids``, ``loss_mask``)."""
        batch = table.select(["input_ids", "position_ids", "loss_mask"])
        offsets = _row_offsets(batch.column("input_ids"))
        if not np.array_equal(_row_offsets(batch.column("position_ids")), offsets) or not np.array_equal(
            _row_offsets(batch.column("loss_mask")), offsets
        ):
            raise DataError("packed rows must have input_ids, position_ids and loss_mask of the same length per row")
        ids, pos, loss, _ = table_to_flat(batch)
        self.add_segments(row_segments(ids, pos, loss, offsets, self.pad_token_id, self.has_padding))

    def add_segments(self, r: RowSegments) -> None:
        """Add rows already measured by :func:`~hfprep.schema.row_segments` (the run measures each row group once)."""
        real = r.seg_len > 0  # the report counts segments that hold tokens (a row of padding only holds none)
        row_len, pad_row, seg_len, n_loss = r.row_len, r.pad_per_row, r.seg_len[real], r.loss_tokens
        seg_row = np.bincount(r.seg_row[real], minlength=len(r.row_len))
        self.rows += len(row_len)
        self.tokens_all += int(row_len.sum())
        self.pad_tokens += int(pad_row.sum())
        self.loss_tokens += n_loss
        self.n_segments += len(seg_len)
        self.over += int(np.count_nonzero(row_len > self.seq_len))
        self.padded &= bool((row_len == self.seq_len).all())
        if len(seg_len):
            k = len(self.hist_count)
            bins = np.clip(np.searchsorted(self.edges, seg_len, side="right") - 1, 0, k - 1)
            self.hist_count += np.bincount(bins, minlength=k)
            self.hist_tokens += np.bincount(bins, weights=seg_len, minlength=k).astype(np.int64)
            low = int(seg_len.min())
            self.seg_min = low if self.seg_min is None else min(self.seg_min, low)
            self.seg_max = max(self.seg_max, int(seg_len.max()))
        if len(seg_row):
            low = int(seg_row.min())
            self.spr_min = low if self.spr_min is None else min(self.spr_min, low)
            self.spr_max = max(self.spr_max, int(seg_row.max()))

    def report(self, stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The :func:`packing_report` dict of every batch added so far, with ``stats``' losses by reason."""
        rows, n_segments, edges = self.rows, self.n_segments, self.edges
        real = self.tokens_all - self.pad_tokens
        slots = rows * self.seq_len
        return {
            "rows": rows,
            "seq_len": self.seq_len,
            "tokens": real,
            "pad_tokens": self.pad_tokens,
            "fill_ratio": real / slots if slots else 0.0,
            "padded": self.padded and rows > 0,
            "loss_tokens": self.loss_tokens,
            "rows_over_seq_len": self.over,
            "segments": {
                "total": n_segments,
                "per_row_mean": n_segments / rows if rows else 0.0,
                "per_row_min": self.spr_min or 0,
                "per_row_max": self.spr_max,
            },
            "segment_lengths": {
                "mean": real / n_segments if n_segments else 0.0,
                "min": self.seg_min or 0,
                "max": self.seg_max,
                "histogram": [
                    {"lo": int(edges[i]), "hi": int(edges[i + 1]), "count": int(self.hist_count[i]),
                     "tokens": int(self.hist_tokens[i])}
                    for i in range(len(self.hist_count))
                ],
            },
            "losses": losses_by_reason(stats),
        }


def losses_by_reason(stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the packer (and tokenizer) did not keep, by reason, from a stats dict; ``{}`` without stats.

    ``dropped``: whole documents left out (too long for ``no_incomplete`` / ``bfd`` with ``drop``, or the
    incomplete tail of ``dense``); ``truncated``: tokens cut off documents; ``split``: documents cut into pieces
    (nothing lost); ``empty_or_invalid``: input rows the tokenizer produced no document for.

    Example:
        >>> losses_by_reason({"tokens_in": 10, "tokens_dropped": 4, "tokens_truncated": 3, "docs_truncated": 1})
        {'tokens_in': 10, 'tokens_lost': 4, 'lost_fraction': 0.4, 'dropped': {'docs': 0, 'tokens': 1}, \
'truncated': {'docs': 1, 'tokens': 3}, 'split': {'docs': 0, 'tokens': 0, 'pieces': 0}}
    """
    if not stats:
        return {}
    g = lambda k: int(stats.get(k, 0) or 0)  # noqa: E731
    tokens_in, lost, truncated = g("tokens_in"), g("tokens_dropped"), g("tokens_truncated")
    out: dict[str, Any] = {
        "tokens_in": tokens_in,
        "tokens_lost": lost,
        "lost_fraction": lost / tokens_in if tokens_in else 0.0,
        "dropped": {"docs": g("docs_dropped"), "tokens": lost - truncated},
        "truncated": {"docs": g("docs_truncated"), "tokens": truncated},
        "split": {"docs": g("docs_split"), "tokens": g("tokens_split"), "pieces": g("split_pieces")},
    }
    if "docs_dropped_by_tokenizer" in stats:
        out["empty_or_invalid"] = {"rows": g("docs_dropped_by_tokenizer")}
    return out


def format_report(report: Mapping[str, Any]) -> str:
    """A few lines for the CLI summary / dataset card (plain text, no trailing newline).

    Example:
        >>> import pyarrow as pa
        >>> t = pa.table({"input_ids": [[1, 2, 3]], "position_ids": [[0, 1, 0]], "loss_mask": [[True] * 3]})
        >>> print(format_report(packing_report(t, 3)))
        rows 1 x seq_len 3: 3 tokens + 0 pad, fill 1.0000
        segments per row: mean 2.00, min 2, max 2; segment length mean 1.5, min 1, max 2
        segment lengths: [1,2) 1 | [2,4) 1
    """
    seg, sl = report["segments"], report["segment_lengths"]
    lines = [
        _fill_line(report["rows"], report["seq_len"], report["tokens"], report["pad_tokens"])
        + ("" if report["padded"] or not report["rows"] else " (variable-length rows)"),
        f"segments per row: mean {seg['per_row_mean']:.2f}, min {seg['per_row_min']}, max {seg['per_row_max']}; "
        f"segment length mean {sl['mean']:.1f}, min {sl['min']}, max {sl['max']}",
        "segment lengths: "
        + " | ".join(f"[{b['lo']},{b['hi']}) {b['count']:,}" for b in sl["histogram"] if b["count"]),
    ]
    if report.get("rows_over_seq_len"):
        lines.append(f"WARNING: {report['rows_over_seq_len']:,} rows are longer than seq_len")
    return "\n".join(lines + _loss_lines(report.get("losses") or {}))


def _fill_line(rows: int, seq_len: int, tokens: int, pad_tokens: int) -> str:
    fill = tokens / (rows * seq_len) if rows and seq_len else 0.0
    return f"rows {rows:,} x seq_len {seq_len:,}: {tokens:,} tokens + {pad_tokens:,} pad, fill {fill:.4f}"


def _loss_lines(losses: Mapping[str, Any]) -> list[str]:
    if not losses:
        return []
    lines = [
        f"lost {losses['tokens_lost']:,} of {losses['tokens_in']:,} tokens ({100 * losses['lost_fraction']:.2f}%): "
        f"dropped {losses['dropped']['docs']:,} docs / {losses['dropped']['tokens']:,} tokens, "
        f"truncated {losses['truncated']['docs']:,} docs / {losses['truncated']['tokens']:,} tokens; "
        f"split {losses['split']['docs']:,} docs into {losses['split']['pieces']:,} pieces (kept)"
    ]
    if "empty_or_invalid" in losses:
        lines.append(f"input rows without a document: {losses['empty_or_invalid']['rows']:,}")
    return lines


def format_stats_report(stats: Mapping[str, Any], seq_len: int) -> str:
    """The packing report as far as a split's recorded stats tell it (a card's ``hfprep.stats.<split>``, no rows
    read): :func:`format_report`'s fill line, the mean segments per row and the losses by reason. The segment
    histograms need the rows (:func:`packing_report`).

    Example:
        >>> print(format_stats_report({"rows": 2, "tokens": 6, "pad_tokens": 2, "segments": 3, "tokens_in": 7,
        ...                            "tokens_dropped": 1, "docs_dropped": 1}, seq_len=4))
        rows 2 x seq_len 4: 6 tokens + 2 pad, fill 0.7500
        segments per row: mean 1.50
        lost 1 of 7 tokens (14.29%): dropped 1 docs / 1 tokens, truncated 0 docs / 0 tokens; split 0 docs into 0 pieces (kept)
    """
    g = lambda k: int(stats.get(k, 0) or 0)  # noqa: E731
    rows = g("rows")
    lines = [_fill_line(rows, int(seq_len), g("tokens"), g("pad_tokens"))]
    if "segments" in stats:
        lines.append(f"segments per row: mean {g('segments') / rows if rows else 0.0:.2f}")
    return "\n".join(lines + _loss_lines(losses_by_reason(stats)))
