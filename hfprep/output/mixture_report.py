"""The mixture's report: the card's per-source table, the ``hfprep inspect`` lines, and the checks ``hfprep validate``
runs on a ``source`` column against the card.

Only the report lives here, apart from the plan (:mod:`hfprep.mixture`), so that reading and validating an output
does not import the tokenization stage.

Example:
    >>> mixture_lines({"sources": []})
    []
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..schema import MAX_SOURCES, SOURCE_COLUMN, SOURCE_PAD, padding_mask, table_to_flat


@dataclasses.dataclass
class SourceReport:
    """One row of the card's mixture table."""

    name: str
    source: str  # id + revision (or local content hash)
    docs_available: int
    tokens_available: int
    docs_chosen: int
    tokens_chosen: int
    epochs: float
    share_asked: float
    tokens_out: int = 0  # after packing
    share_delivered: float = 0.0  # of the output's real tokens
    tokens_lost: int = 0  # chosen - out = lost_dropped + lost_cut
    lost_dropped: int = 0  # in documents the packer dropped whole (e.g. longer than seq_len for no_incomplete)
    lost_cut: int = 0  # cut off documents kept in part (dense row tails, bfd truncation)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mixture_table(rows: Sequence[SourceReport | dict[str, Any]]) -> str:
    """The markdown mixture table of the card (and of ``hfprep inspect``).

    Example:
        >>> print(mixture_table([SourceReport("web", "hub/web@abc", 10, 1000, 5, 500, 0.5, 0.5, 480, 0.5, 20,
        ...                                   0, 20)]).splitlines()[2])
        | web | hub/web@abc | 10 | 1,000 | 5 | 500 | 0.50 | 50.00% | 50.00% | 20 (0 dropped whole, 20 cut) |
    """
    head = (
        "| source | id + revision | documents available | tokens available | documents chosen | tokens chosen "
        "| epochs | share asked | share delivered | tokens lost in packing |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        d = r.as_dict() if isinstance(r, SourceReport) else r
        lost = f"{d['tokens_lost']:,}" + (
            f" ({d['lost_dropped']:,} dropped whole, {d['lost_cut']:,} cut)" if d["tokens_lost"] else ""
        )
        lines.append(
            f"| {d['name']} | {d['source']} | {d['docs_available']:,} | {d['tokens_available']:,} "
            f"| {d['docs_chosen']:,} | {d['tokens_chosen']:,} | {d['epochs']:.2f} | {d['share_asked']:.2%} "
            f"| {d['share_delivered']:.2%} | {lost} |"
        )
    return "\n".join(lines)


def mixture_lines(meta: dict[str, Any] | None) -> list[str]:
    """Plain-text mixture table for ``hfprep inspect`` from the card metadata's ``hfprep.mixture`` (or [])."""
    if not meta or not meta.get("sources"):
        return []
    rows = meta["sources"]
    head = ["source", "docs chosen/avail", "tokens chosen/avail", "epochs", "asked", "delivered", "lost"]
    body = [
        [
            str(r["name"]),
            f"{r['docs_chosen']:,}/{r['docs_available']:,}",
            f"{r['tokens_chosen']:,}/{r['tokens_available']:,}",
            f"{r['epochs']:.2f}",
            f"{r['share_asked']:.2%}",
            f"{r['share_delivered']:.2%}",
            f"{r['tokens_lost']:,}",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    total = meta.get("tokens")
    out = ["", f"mixture: {len(rows)} sources" + (f", budget {total:,} tokens" if total else "")]
    out += [f"  note: {n}" for n in meta.get("notes") or []]
    out += [fmt(head)] + [fmt(b) for b in body]
    return out


# ----------------------------------------------------------------------------------------------- validation


def source_column_counts(table: Any, pad_token_id: int | None, padded: bool, where: str, row_base: int):
    """Real tokens per source index in a batch with a ``source`` column, and the rows where the column breaks
    its rule (same length as ``input_ids``; ``-1`` exactly on padding; a non-negative index elsewhere)."""
    ids, pos, loss, offsets = table_to_flat(table)
    col = table.column(SOURCE_COLUMN).combine_chunks()
    src = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    problems: list[str] = []
    if not np.array_equal(lens, np.diff(offsets)):
        r = int(np.flatnonzero(lens != np.diff(offsets))[0])
        return np.zeros(MAX_SOURCES + 1, np.int64), [f"{where} row {row_base + r}: source has {lens[r]} entries, not {np.diff(offsets)[r]}"]
    pad = padding_mask(ids, pos, loss, offsets, pad_token_id) if padded else np.zeros(len(ids), np.bool_)
    bad = np.flatnonzero(((src == SOURCE_PAD) != pad) | ((src < 0) & (src != SOURCE_PAD)))
    if len(bad):
        i = int(bad[0])
        row = int(np.searchsorted(offsets, i, side="right") - 1)
        problems.append(f"{where} row {row_base + row}, token {i - offsets[row]}: source {src[i]} "
                        f"({'padding' if pad[i] else 'a real token'}); -1 must mark exactly the padding")
    return np.bincount(src[~pad & (src >= 0)], minlength=MAX_SOURCES + 1).astype(np.int64), problems


def check_mixture_card(meta: dict[str, Any] | None, counts: np.ndarray) -> list[str]:
    """The card's per-source ``tokens_out`` against the counts recomputed from the ``source`` column."""
    if not meta or not meta.get("sources"):
        return ["README.md: the data has a source column but the card has no hfprep.mixture table"]
    out = []
    for i, r in enumerate(meta["sources"]):
        got = int(counts[i]) if i < len(counts) else 0
        if int(r.get("tokens_out", -1)) != got:
            out.append(f"README.md: mixture source {r.get('name')!r} tokens_out = {r.get('tokens_out')} in the card, "
                       f"{got} in the source column")
    if len(counts) > len(meta["sources"]) and counts[len(meta["sources"]):].any():
        out.append(f"README.md: the source column names indices >= {len(meta['sources'])}, the card lists fewer sources")
    return out
