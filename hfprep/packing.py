"""Pack stage: tokenized documents -> fixed-length rows.

The packers work on flat arrays + document offsets (the Arrow list layout) and return flat arrays + row offsets,
so a whole reduce group is packed with a handful of numpy calls. The seed's list-of-dicts API
(:func:`pack_dense`, :func:`pack_no_incomplete`, :func:`pack_sequences`, :func:`position_fix_helper`) wraps them.

Semantics (DESIGN.md §2):

* ``dense``: concatenate, cut into ``seq_len`` rows, drop the incomplete tail; positions rebased so each segment
  of a row starts at 0.
* ``no_incomplete``: greedy in input order; a document longer than ``seq_len`` is dropped; when the next document
  does not fit, the row is padded with ``pad_token_id``, position 0, ``loss_mask`` False.

Example:
    >>> import numpy as np
    >>> rows = [{"input_ids": np.array([1, 2, 3], np.uint32), "position_ids": np.arange(3, dtype=np.uint32),
    ...          "loss_mask": np.ones(3, bool)}]
    >>> [r["input_ids"].tolist() for r in pack_dense(rows, 2)]
    [[1, 2]]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from jaxtyping import Bool, Int64, UInt32

from .errors import ConfigError
from .types import TokenizedRow

PackingStrategy = Literal["dense", "no_incomplete"]


@dataclass
class PackStats:
    """What a packer did, in documents and tokens. Additive over groups (:meth:`merge`).

    ``tokens_out`` counts real (non-pad) tokens written; ``tokens_in == tokens_out + tokens_dropped`` always
    holds (truncated tokens are part of ``tokens_dropped`` and also counted in ``tokens_truncated``).
    """

    docs_in: int = 0
    docs_dropped: int = 0
    docs_truncated: int = 0
    docs_split: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_dropped: int = 0
    tokens_truncated: int = 0
    pad_tokens: int = 0
    rows: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def merge(self, other: PackStats) -> PackStats:
        out = PackStats()
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            setattr(out, f.name, getattr(self, f.name) + getattr(other, f.name))
        out.extra = dict(self.extra)
        for k, v in other.extra.items():
            out.extra[k] = out.extra.get(k, 0) + v
        return out

    @property
    def fill_ratio(self) -> float:
        """Real tokens / all token slots written (1.0 when nothing is padded)."""
        slots = self.tokens_out + self.pad_tokens
        return self.tokens_out / slots if slots else 0.0

    def as_dict(self) -> dict[str, float | int]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        d["fill_ratio"] = self.fill_ratio
        return d


@dataclass
class PackedFlat:
    """Packed rows as flat arrays + ``row_offsets`` (every row ``seq_len`` long for the padded packers)."""

    input_ids: UInt32[np.ndarray, " total"]
    position_ids: UInt32[np.ndarray, " total"]
    loss_mask: Bool[np.ndarray, " total"]
    row_offsets: Int64[np.ndarray, " rows_plus_1"]
    stats: PackStats

    @property
    def num_rows(self) -> int:
        return len(self.row_offsets) - 1

    def rows(self) -> list[TokenizedRow]:
        o = self.row_offsets
        return [
            {
                "input_ids": self.input_ids[o[i] : o[i + 1]],
                "position_ids": self.position_ids[o[i] : o[i + 1]],
                "loss_mask": self.loss_mask[o[i] : o[i + 1]],
            }
            for i in range(self.num_rows)
        ]


def check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int | np.integer) or seq_len < 2:
        raise ConfigError(f"seq_len must be an integer >= 2 (a row needs an input and a target), got {seq_len!r}")


def rebase_positions(
    position_ids: UInt32[np.ndarray, " n"], row_starts: Bool[np.ndarray, " n"] | None = None
) -> UInt32[np.ndarray, " n"]:
    """Vectorised :func:`position_fix_helper` over many rows at once.

    A segment starts at index 0, wherever the position decreases, and wherever ``row_starts`` is True; every
    segment is shifted so that it starts at 0.
    """
    ids = np.asarray(position_ids)
    n = ids.shape[0]
    if n == 0:
        return ids.astype(np.uint32)
    starts = np.empty(n, dtype=np.bool_)
    starts[0] = True
    np.less(ids[1:], ids[:-1], out=starts[1:])
    if row_starts is not None:
        starts |= row_starts
    start_idx = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    return (ids.astype(np.int64) - ids[start_idx].astype(np.int64)).astype(np.uint32)


def position_fix_helper(postion_ids: UInt32[np.typing.ArrayLike, " example_len"]) -> UInt32[np.ndarray, " example_len"]:
    """Rebase each segment (between decreases) so it starts at 0.

    Example:
        >>> position_fix_helper([2, 3, 4, 0, 1, 2, 3]).tolist()
        [0, 1, 2, 0, 1, 2, 3]
        >>> position_fix_helper([4, 0, 1, 0]).tolist()
        [0, 0, 1, 0]
    """
    return rebase_positions(np.asarray(postion_ids, dtype=np.uint32))


def pack_dense_flat(
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    loss_mask: np.ndarray,
    doc_offsets: np.ndarray,
    seq_len: int,
    pad_token_id: int | None = None,
) -> PackedFlat:
    """Concatenate the documents, cut into ``seq_len`` rows, drop the incomplete tail (no padding)."""
    check_seq_len(seq_len)
    total = int(doc_offsets[-1])
    n_rows = total // seq_len
    cut = n_rows * seq_len
    row_starts = np.zeros(cut, dtype=np.bool_)
    row_starts[::seq_len] = True
    positions = rebase_positions(position_ids[:cut], row_starts)
    starts = np.asarray(doc_offsets[:-1])
    ends = np.asarray(doc_offsets[1:])
    lengths = ends - starts
    nonempty = lengths > 0
    stats = PackStats(
        docs_in=len(starts),
        docs_dropped=int(np.count_nonzero((starts >= cut) & nonempty)),
        docs_truncated=int(np.count_nonzero((starts < cut) & (ends > cut))),
        tokens_in=total,
        tokens_out=cut,
        tokens_dropped=total - cut,
        tokens_truncated=int(np.clip(ends - max(cut, 0), 0, None)[(starts < cut) & (ends > cut)].sum()),
        rows=n_rows,
    )
    return PackedFlat(
        np.ascontiguousarray(input_ids[:cut], dtype=np.uint32),
        positions,
        np.ascontiguousarray(loss_mask[:cut], dtype=np.bool_),
        np.arange(n_rows + 1, dtype=np.int64) * seq_len,
        stats,
    )


def greedy_assign(lengths: Int64[np.ndarray, " n"], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """In-order greedy bins: ``(row, offset_in_row)`` per document, ``row = -1`` for documents > ``seq_len``.

    The loop is per document (the algorithm is sequential), never per token.
    """
    row = np.full(len(lengths), -1, dtype=np.int64)
    off = np.zeros(len(lengths), dtype=np.int64)
    cur_row, fill = -1, seq_len  # "no open row yet"
    for i, ln in enumerate(lengths.tolist()):
        if ln > seq_len:
            continue
        if fill + ln > seq_len:
            cur_row += 1
            fill = 0
        row[i] = cur_row
        off[i] = fill
        fill += ln
    return row, off


def scatter_into_rows(
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    loss_mask: np.ndarray,
    doc_offsets: np.ndarray,
    doc_dest: Int64[np.ndarray, " n"],
    n_rows: int,
    seq_len: int,
    pad_token_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copy each kept document (``doc_dest >= 0``) to flat slot ``doc_dest`` of ``n_rows`` padded rows.

    Padding is ``pad_token_id``, position 0, loss False. One gather for the whole group.
    """
    out_ids = np.full(n_rows * seq_len, pad_token_id, dtype=np.uint32)
    out_pos = np.zeros(n_rows * seq_len, dtype=np.uint32)
    out_mask = np.zeros(n_rows * seq_len, dtype=np.bool_)
    keep = doc_dest >= 0
    starts = np.asarray(doc_offsets[:-1])[keep]
    lens = np.diff(doc_offsets)[keep]
    total = int(lens.sum())
    if total:
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
        src = np.repeat(starts, lens) + within
        dst = np.repeat(doc_dest[keep], lens) + within
        out_ids[dst] = input_ids[src]
        out_pos[dst] = position_ids[src]
        out_mask[dst] = loss_mask[src]
    return out_ids, out_pos, out_mask


def pack_no_incomplete_flat(
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    loss_mask: np.ndarray,
    doc_offsets: np.ndarray,
    seq_len: int,
    pad_token_id: int | None = None,
) -> PackedFlat:
    """In-order greedy packing into padded rows; documents longer than ``seq_len`` are dropped (counted)."""
    check_seq_len(seq_len)
    if pad_token_id is None:
        raise ConfigError("no_incomplete packing needs a pad_token_id (hfprep defaults it to the tokenizer's eos)")
    lengths = np.diff(np.asarray(doc_offsets, dtype=np.int64))
    row, off = greedy_assign(lengths, seq_len)
    n_rows = int(row.max()) + 1 if len(row) else 0
    dest = np.where(row >= 0, row * seq_len + off, -1)
    ids, pos, mask = scatter_into_rows(
        input_ids, position_ids, loss_mask, doc_offsets, dest, n_rows, seq_len, pad_token_id
    )
    dropped = row < 0
    kept_tokens = int(lengths[~dropped].sum())
    stats = PackStats(
        docs_in=len(lengths),
        docs_dropped=int(dropped.sum()),
        tokens_in=int(lengths.sum()),
        tokens_out=kept_tokens,
        tokens_dropped=int(lengths[dropped].sum()),
        pad_tokens=n_rows * seq_len - kept_tokens,
        rows=n_rows,
    )
    return PackedFlat(ids, pos, mask, np.arange(n_rows + 1, dtype=np.int64) * seq_len, stats)


FlatPacker = Callable[..., PackedFlat]
PACKERS: dict[str, FlatPacker] = {"dense": pack_dense_flat, "no_incomplete": pack_no_incomplete_flat}
"""Flat packers by strategy name. Other modules register more (e.g. ``bfd``)."""


def get_packer(strategy: str) -> FlatPacker:
    if strategy not in PACKERS:
        raise ConfigError(f"packing strategy {strategy!r} is not supported; choose one of {sorted(PACKERS)}")
    return PACKERS[strategy]


def rows_to_flat(rows: Iterable[TokenizedRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate row dicts into ``(input_ids, position_ids, loss_mask, doc_offsets)``."""
    rows = list(rows)
    if not rows:
        z = np.zeros(0, np.uint32)
        return z, z.copy(), np.zeros(0, np.bool_), np.zeros(1, np.int64)
    lens = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    ids = np.concatenate([np.asarray(r["input_ids"], np.uint32) for r in rows])
    pos = np.concatenate([np.asarray(r["position_ids"], np.uint32) for r in rows])
    mask = np.concatenate([np.asarray(r["loss_mask"], np.bool_) for r in rows])
    return ids, pos, mask, offsets


def pack_dense(rows: Iterable[TokenizedRow], seq_len: int) -> list[TokenizedRow]:
    """Greedily pack all the rows into ``seq_len`` rows, dropping the trailing incomplete row (seed API).

    Example:
        >>> import numpy as np
        >>> ex = [{"input_ids": np.arange(1, 6, dtype=np.uint32), "position_ids": np.arange(5, dtype=np.uint32),
        ...        "loss_mask": np.ones(5, bool)},
        ...       {"input_ids": np.array([0, 1], np.uint32), "position_ids": np.arange(2, dtype=np.uint32),
        ...        "loss_mask": np.ones(2, bool)}]
        >>> [r["position_ids"].tolist() for r in pack_dense(ex, 3)]
        [[0, 1, 2], [0, 1, 0]]
    """
    return pack_dense_flat(*rows_to_flat(rows), seq_len).rows()


def pack_no_incomplete(rows: Iterable[TokenizedRow], seq_len: int, pad_token_id: int) -> list[TokenizedRow]:
    """Pack without cutting documents: drop those longer than ``seq_len``, pad rows (seed API).

    Padding: ``pad_token_id``, position 0, ``loss_mask`` False.
    """
    return pack_no_incomplete_flat(*rows_to_flat(rows), seq_len, pad_token_id).rows()


def pack_sequences(
    rows: Iterable[TokenizedRow], seq_len: int, pad_token_id: int, strategy: str
) -> list[TokenizedRow]:
    """Pack with the named strategy (``dense``, ``no_incomplete``, or any registered in :data:`PACKERS`)."""
    return get_packer(strategy)(*rows_to_flat(rows), seq_len, pad_token_id).rows()
