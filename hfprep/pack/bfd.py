"""Best-fit-decreasing packing over a whole reduce group (registered as packing strategy ``bfd``).

Documents are sorted by length, longest first (ties keep input order), and each one goes into the open row with
the *least* free room that still fits it; a new row is opened only when none fits. Documents longer than
``seq_len`` follow an explicit ``overflow`` policy:

* ``split`` (default): cut into ``seq_len`` pieces (the last one shorter); every piece is its own segment with
  positions restarted at 0, and its ``loss_mask`` follows its tokens. Nothing is lost.
* ``truncate``: keep the first ``seq_len`` tokens; the rest is counted in ``tokens_truncated``.
* ``drop``: skip the document; counted in ``docs_dropped`` / ``tokens_dropped``.

Best fit is not always optimal: on rare inputs in-order greedy needs fewer rows. When bfd is above the lower
bound ``ceil(tokens / seq_len)`` the greedy row count is computed too and the better layout is kept (counted in
``extra["groups_greedy_fallback"]``), so bfd never packs worse than ``no_incomplete`` on the same pieces.

``pad=True`` pads every row to ``seq_len`` like ``no_incomplete`` (pad id, position 0, loss False);
``pad=False`` emits variable-length rows (at most ``seq_len``) for padding-free training.

How it stays fast in pure numpy + Python: documents of the same length are placed together, and open rows are
kept in buckets by free room (``0..seq_len``). A run of ``k`` documents of length ``L`` walks the non-empty
buckets with room ``>= L`` in ascending order; a row with room ``c`` takes ``c // L`` of them in a row (after
each placement it is still the best fit), so a whole bucket of rows is served with a few list operations.
The Python work is per (length, bucket) visit, not per document, and the tokens are moved at the end with one
``np.concatenate`` of views per column (no per-token index arrays, so the extra memory is the output itself).

Example:
    >>> import numpy as np
    >>> lengths = np.array([3, 2, 2, 1])
    >>> offsets = np.concatenate([[0], np.cumsum(lengths)])
    >>> ids = np.arange(1, 9, dtype=np.uint32)
    >>> pos = np.concatenate([np.arange(n) for n in lengths]).astype(np.uint32)
    >>> packed = pack_bfd_flat(ids, pos, np.ones(8, bool), offsets, seq_len=4, pad_token_id=0)
    >>> [r["input_ids"].tolist() for r in packed.rows()]
    [[1, 2, 3, 8], [4, 5, 6, 7]]
    >>> [r["position_ids"].tolist() for r in packed.rows()]
    [[0, 1, 2, 0], [0, 1, 0, 1]]
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Literal

import numpy as np
from jaxtyping import Bool, Int64, UInt32

from ..errors import ConfigError
from ..schema import trailing_padding_like
from .packers import (
    PACKERS,
    PackedFlat,
    PackStats,
    check_seq_len,
    greedy_assign,
    greedy_row_count,
    layout_rows,
)

Overflow = Literal["drop", "truncate", "split"]
OVERFLOW_POLICIES: tuple[str, ...] = ("drop", "truncate", "split")


def bfd_assign(lengths: Int64[np.ndarray, " n"], seq_len: int) -> tuple[Int64[np.ndarray, " n"], int]:
    """Best-fit-decreasing bins for items of length ``1..seq_len``: ``(bin index per item, number of bins)``.

    Bins are numbered in the order they are opened. Items are placed longest first, ties in input order; each
    goes to the fitting bin with the least room left (ties: the bin that reached that room first). Inside a bin,
    items are placed (and later laid out) in that same order.

    Example:
        >>> bins, n = bfd_assign(np.array([1, 3, 2, 2]), 4)
        >>> bins.tolist(), n
        ([0, 0, 1, 1], 2)
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    if lengths.min() < 1 or lengths.max() > seq_len:
        raise ValueError(f"bfd_assign needs item lengths in 1..{seq_len}, got {lengths.min()}..{lengths.max()}")
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    run_starts = np.flatnonzero(np.diff(sorted_len)) + 1
    run_len_values = sorted_len[np.concatenate([[0], run_starts])].tolist()
    run_sizes = np.diff(np.concatenate([[0], run_starts, [n]])).tolist()

    # buckets[c]: bins with exactly c free slots, in the order they got there; caps: sorted non-empty c values.
    buckets: dict[int, list[int]] = {}
    caps: list[int] = []
    placed_bins: list[int] = []  # bins in placement order; placed_counts[i] items go to placed_bins[i]
    placed_counts: list[int] = []
    n_bins = 0
    for size, k in zip(run_len_values, run_sizes, strict=True):
        i = bisect_left(caps, size)
        j = i
        new_caps: list[int] = []
        while k and j < len(caps):
            c = caps[j]
            q = c // size
            rows = buckets[c]
            m = len(rows)
            rest = c - q * size  # room left once a row has taken q items (< size: it leaves this run's reach)
            if m * q <= k:
                placed_bins.extend(rows)
                placed_counts.extend([q] * m)
                k -= m * q
                buckets[c] = []
                if rest:
                    if not buckets.get(rest):
                        new_caps.append(rest)
                    buckets.setdefault(rest, []).extend(rows)
                j += 1
                continue
            full, part = divmod(k, q)
            placed_bins.extend(rows[:full])
            placed_counts.extend([q] * full)
            if rest and full:
                if not buckets.get(rest):
                    new_caps.append(rest)
                buckets.setdefault(rest, []).extend(rows[:full])
            used = full
            if part:
                row = rows[full]
                placed_bins.append(row)
                placed_counts.append(part)
                room = c - part * size  # still >= size, but the run is over
                if not buckets.get(room):
                    new_caps.append(room)
                buckets.setdefault(room, []).append(row)
                used += 1
            buckets[c] = rows[used:]
            if not buckets[c]:
                j += 1
            k = 0
        del caps[i:j]
        if k:
            q = seq_len // size
            full, part = divmod(k, q)
            opened = list(range(n_bins, n_bins + full))
            placed_bins.extend(opened)
            placed_counts.extend([q] * full)
            rest = seq_len - q * size
            if rest and full:
                if not buckets.get(rest):
                    new_caps.append(rest)
                buckets.setdefault(rest, []).extend(opened)
            n_bins += full
            if part:
                placed_bins.append(n_bins)
                placed_counts.append(part)
                room = seq_len - part * size
                if not buckets.get(room):
                    new_caps.append(room)
                buckets.setdefault(room, []).append(n_bins)
                n_bins += 1
        for c in new_caps:
            insort(caps, c)
    sorted_bin = np.repeat(np.asarray(placed_bins, dtype=np.int64), np.asarray(placed_counts, dtype=np.int64))
    bins = np.empty(n, dtype=np.int64)
    bins[order] = sorted_bin
    return bins, n_bins


def make_pieces(
    doc_offsets: Int64[np.ndarray, " n_plus_1"], seq_len: int, overflow: str
) -> tuple[Int64[np.ndarray, " p"], Int64[np.ndarray, " p"], Int64[np.ndarray, " p"]]:
    """Cut documents into the pieces bfd packs: ``(source start, length, document index)`` per piece.

    ``split`` cuts a long document into ``seq_len`` pieces plus a shorter last one; ``truncate`` keeps its first
    ``seq_len`` tokens; ``drop`` keeps no piece of it. Empty documents yield no piece.
    """
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if overflow == "split":
        n_pieces = -(-lengths // seq_len)
        doc = np.repeat(np.arange(len(lengths), dtype=np.int64), n_pieces)
        first = np.cumsum(n_pieces) - n_pieces
        k = np.arange(len(doc), dtype=np.int64) - np.repeat(first, n_pieces)
        piece_start = starts[doc] + k * seq_len
        piece_len = np.minimum(lengths[doc] - k * seq_len, seq_len)
        return piece_start, piece_len, doc
    keep = lengths > 0 if overflow == "truncate" else (lengths > 0) & (lengths <= seq_len)
    doc = np.flatnonzero(keep).astype(np.int64)
    return starts[doc], np.minimum(lengths[doc], seq_len), doc


def pack_bfd_flat(
    input_ids: UInt32[np.ndarray, " total"],
    position_ids: UInt32[np.ndarray, " total"],
    loss_mask: Bool[np.ndarray, " total"],
    doc_offsets: Int64[np.ndarray, " n_plus_1"],
    seq_len: int,
    pad_token_id: int | None = None,
    *,
    overflow: Overflow = "split",
    pad: bool = True,
) -> PackedFlat:
    """Best-fit-decreasing packing of one group of documents (flat arrays + offsets in, :class:`PackedFlat` out).

    Args:
        input_ids, position_ids, loss_mask: the documents laid end to end.
        doc_offsets: ``n + 1`` offsets of the documents in the flat arrays.
        seq_len: row length (the maximum when ``pad=False``).
        pad_token_id: padding id (needed when ``pad=True``).
        overflow: ``split`` (nothing lost), ``truncate`` or ``drop`` for documents longer than ``seq_len``.
        pad: pad rows to ``seq_len`` (True) or emit variable-length rows for padding-free training (False).

    Stats: ``docs_split`` counts split documents; ``extra`` has ``tokens_split`` (their tokens, all kept),
    ``split_pieces`` (segments they became) and ``segments`` (segments written).

    Example:
        >>> ids = np.arange(6, dtype=np.uint32)
        >>> pos = np.arange(6, dtype=np.uint32)
        >>> out = pack_bfd_flat(ids, pos, np.ones(6, bool), np.array([0, 6]), 4, pad=False)
        >>> [r["position_ids"].tolist() for r in out.rows()], out.stats.extra["tokens_split"]
        ([[0, 1, 2, 3], [0, 1]], 6)
    """
    check_seq_len(seq_len)
    if overflow not in OVERFLOW_POLICIES:
        raise ConfigError(f"bfd overflow must be one of {list(OVERFLOW_POLICIES)}, got {overflow!r}")
    if not isinstance(pad, bool | np.bool_):
        raise ConfigError(f"bfd pad must be true or false, got {pad!r}")
    if pad and pad_token_id is None:
        raise ConfigError("bfd packing with pad=true needs a pad_token_id (hfprep defaults it to the tokenizer's eos)")
    seq_len = int(seq_len)
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    doc_len = np.diff(offsets)
    too_long = doc_len > seq_len
    piece_start, piece_len, piece_doc = make_pieces(offsets, seq_len, overflow)
    padding_like = docs_gone = 0
    if pad:
        # A piece's trailing tokens that would read as padding are left out, so schema.padding_mask finds exactly
        # the padding written here (e.g. a split document's last piece that is a lone pad id with no loss).
        strip = trailing_padding_like(input_ids, position_ids, loss_mask, piece_start, piece_len, pad_token_id)
        if strip.any():
            padding_like = int(strip.sum())
            had = np.unique(piece_doc)
            piece_len = piece_len - strip
            keep = piece_len > 0
            piece_start, piece_len, piece_doc = piece_start[keep], piece_len[keep], piece_doc[keep]
            docs_gone = len(had) - len(np.unique(piece_doc))
    bins, n_rows = bfd_assign(piece_len, seq_len)
    rank = np.argsort(-piece_len, kind="stable")  # placement: longest first, then input order
    fallback = 0
    if n_rows > -(-int(piece_len.sum()) // seq_len) and greedy_row_count(piece_len, seq_len) < n_rows:
        # Best fit is not always optimal, and on rare inputs in-order greedy needs fewer rows: keep the better of
        # the two, so bfd never packs worse than no_incomplete would on the same pieces.
        greedy_rows, _ = greedy_assign(piece_len, seq_len)
        bins, n_rows, rank, fallback = greedy_rows, int(greedy_rows[-1]) + 1, np.arange(len(piece_len)), 1

    order_in_row = np.empty(len(rank), dtype=np.int64)
    order_in_row[rank] = np.arange(len(rank))
    out_ids, out_pos, out_mask, row_offsets = layout_rows(
        input_ids, position_ids, loss_mask, piece_start, piece_len, bins, order_in_row, n_rows, seq_len,
        pad_token_id, pad,
    )

    tokens_in = int(doc_len.sum())
    tokens_out = int(piece_len.sum())
    long_tokens = int(doc_len[too_long].sum())
    n_long = int(too_long.sum())
    stats = PackStats(
        docs_in=len(doc_len),
        docs_dropped=(n_long if overflow == "drop" else 0) + docs_gone,
        docs_truncated=n_long if overflow == "truncate" else 0,
        docs_split=n_long if overflow == "split" else 0,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        tokens_dropped=tokens_in - tokens_out,
        tokens_truncated=long_tokens - n_long * seq_len if overflow == "truncate" else 0,
        pad_tokens=n_rows * seq_len - tokens_out if pad else 0,
        rows=n_rows,
        extra={
            "tokens_split": long_tokens if overflow == "split" else 0,
            "split_pieces": int(np.count_nonzero(too_long[piece_doc])) if overflow == "split" else 0,
            "segments": len(piece_len),
            "groups_greedy_fallback": fallback,
        },
    )
    if padding_like:
        stats.extra["padding_like_tokens"] = padding_like
    return PackedFlat(out_ids, out_pos, out_mask, row_offsets, stats)


PACKERS["bfd"] = pack_bfd_flat
