"""Pack stage: tokenized documents -> fixed-length rows.

The packers work on flat arrays + document offsets (the Arrow list layout) and return flat arrays + row offsets,
so a whole reduce group is packed with a handful of numpy calls. The seed's list-of-dicts API
(:func:`pack_dense`, :func:`pack_no_incomplete`, :func:`pack_sequences`, :func:`position_fix_helper`) wraps them.

Semantics:

* ``dense``: concatenate, cut into ``seq_len`` rows, drop the incomplete tail; positions rebased so each segment
  of a row starts at 0. In a map-reduce run (``PrepareForTrainingTransform``, ``hfprep run``) a group's incomplete
  tail is not dropped: :func:`pack_dense_tails_flat` packs the tails of all groups in one final pass
  (*dense tails*), so a whole run drops at most one partial row.
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
import itertools
import mmap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Bool, Int64, UInt32

from ..errors import ConfigError
from ..schema import TokenizedRow, constant_value, trailing_padding_like


@dataclass
class PackStats:
    """What a packer did, in documents and tokens. Additive over groups (:meth:`merge`).

    ``tokens_out`` counts real (non-pad) tokens written; ``tokens_in == tokens_out + tokens_dropped`` always
    holds (truncated tokens are part of ``tokens_dropped`` and also counted in ``tokens_truncated``).
    ``doc_length_bins`` (bin -> documents, :func:`hfprep.output.plots.length_bin_counts` bins) is filled by a
    transform that records document lengths (the runs' card histogram); ``extra`` holds packer-specific counts.
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
    doc_length_bins: dict[int, int] = field(default_factory=dict)

    def merge(self, other: PackStats) -> PackStats:
        out = PackStats()
        for f in dataclasses.fields(self):
            if f.name in _COUNTS:
                getattr(out, f.name).update(_add_counts(getattr(self, f.name), getattr(other, f.name)))
            else:
                setattr(out, f.name, getattr(self, f.name) + getattr(other, f.name))
        return out

    @property
    def fill_ratio(self) -> float:
        """Real tokens / all token slots written (1.0 when nothing is padded)."""
        slots = self.tokens_out + self.pad_tokens
        return self.tokens_out / slots if slots else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Flat counts (``extra`` merged in), ``fill_ratio``, and ``doc_length_bins`` when any were recorded."""
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        bins = d.pop("doc_length_bins")
        d.update(extra)
        d["fill_ratio"] = self.fill_ratio
        if bins:
            d["doc_length_bins"] = bins
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PackStats:
        """The inverse of :meth:`as_dict`, also after a JSON round trip (bin keys come back as strings).

        Example:
            >>> import json
            >>> s = PackStats(docs_in=2, tokens_in=9, tokens_out=9, rows=1, doc_length_bins={12: 2})
            >>> PackStats.from_dict(json.loads(json.dumps(s.as_dict()))) == s
            True
        """
        names = {f.name for f in dataclasses.fields(cls)} - _COUNTS
        s = cls(**{k: int(v) for k, v in d.items() if k in names})
        s.extra = {k: int(v) for k, v in d.items() if k not in names and k not in _COUNTS and k != "fill_ratio"}
        s.doc_length_bins = {int(b): int(c) for b, c in (d.get("doc_length_bins") or {}).items()}
        return s


_COUNTS = frozenset({"extra", "doc_length_bins"})  # PackStats fields that are dicts of counts, merged per key


def _add_counts(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[Any, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


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


def rebase_row_heads(
    position_ids: UInt32[np.ndarray, " total"],
    doc_offsets: Int64[np.ndarray, " n_plus_1"],
    seq_len: int,
    n_rows: int,
    first_row: int = 0,
) -> UInt32[np.ndarray, " cut"]:
    """Positions of ``n_rows`` dense rows: each row's leading partial segment is shifted to start at 0.

    ``position_ids`` starts at row ``first_row`` of the group (token ``first_row * seq_len``; ``doc_offsets`` are
    the group's). Precondition: documents' positions are an ``arange`` (every strategy writes them so; other input
    goes through :func:`pack_dense_flat`, see :func:`positions_are_aranges`), so only the run from a
    row start to the next document start can need rebasing; it is fixed in place, one vectorised subtract per cut
    row, with no per-token index arrays (the seed's :func:`position_fix_helper` applied to every row).
    """
    cut = n_rows * seq_len
    out = np.array(position_ids[:cut], dtype=np.uint32)
    if not n_rows:
        return out
    row_starts = np.arange(n_rows, dtype=np.int64) * seq_len
    global_starts = row_starts + first_row * seq_len
    next_doc = np.asarray(doc_offsets)[np.searchsorted(doc_offsets, global_starts)]
    run = np.minimum(next_doc, global_starts + seq_len) - global_starts
    first = out[row_starts]
    cut_rows = np.flatnonzero((run > 0) & (first != 0))
    for a, n, f in zip(row_starts[cut_rows].tolist(), run[cut_rows].tolist(), first[cut_rows].tolist()):
        view = out[a : a + n]
        view -= np.uint32(f)
    return out


def positions_are_aranges(position_ids: UInt32[np.ndarray, " total"], doc_offsets: Int64[np.ndarray, " n_plus_1"]) -> bool:
    """Whether every document's positions are one ``0, 1, ..., len - 1`` run (what the tokenize stage writes).

    Segments count up by 1 (the row contract), so it is enough to look at each document's first and last
    position: a restart inside a document would leave its last position below ``len - 1``. O(documents).

    Example:
        >>> positions_are_aranges(np.array([0, 1, 0], np.uint32), np.array([0, 2, 3]))
        True
        >>> positions_are_aranges(np.array([0, 1, 0, 1], np.uint32), np.array([0, 4]))
        False
    """
    pos = np.asarray(position_ids)
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    starts, lengths = offsets[:-1][nonempty], lengths[nonempty]
    if not len(starts):
        return True
    return bool((pos[starts] == 0).all() and (pos[starts + lengths - 1].astype(np.int64) == lengths - 1).all())


def dense_stats(doc_offsets: Int64[np.ndarray, " n_plus_1"], seq_len: int) -> PackStats:
    """What dense packing keeps and drops for documents laid out at ``doc_offsets``."""
    total = int(doc_offsets[-1])
    n_rows = total // seq_len
    cut = n_rows * seq_len
    starts = np.asarray(doc_offsets[:-1])
    ends = np.asarray(doc_offsets[1:])
    nonempty = ends > starts
    straddle = (starts < cut) & (ends > cut)
    return PackStats(
        docs_in=len(starts),
        docs_dropped=int(np.count_nonzero((starts >= cut) & nonempty)),
        docs_truncated=int(np.count_nonzero(straddle)),
        tokens_in=total,
        tokens_out=cut,
        tokens_dropped=total - cut,
        tokens_truncated=int((ends[straddle] - cut).sum()),
        rows=n_rows,
    )


def pack_dense_flat(
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    loss_mask: np.ndarray,
    doc_offsets: np.ndarray,
    seq_len: int,
    pad_token_id: int | None = None,
) -> PackedFlat:
    """Concatenate the documents, cut into ``seq_len`` rows, drop the incomplete tail (no padding).

    Positions are rebased per segment (:func:`rebase_positions` with every row start a segment start), so any
    input positions are handled, not only one ``0..n-1`` run per document.
    """
    check_seq_len(seq_len)
    stats = dense_stats(doc_offsets, seq_len)
    n_rows = stats.rows
    cut = n_rows * seq_len
    if positions_are_aranges(position_ids, doc_offsets):
        positions = rebase_row_heads(position_ids, doc_offsets, seq_len, n_rows)
    else:
        # Rows that already hold several segments (re-packed rows): every segment of a row, and the row's leading
        # partial one, is rebased to start at 0, exactly position_fix_helper on each row.
        row_starts = np.zeros(cut, dtype=np.bool_)
        row_starts[::seq_len] = True
        positions = rebase_positions(np.asarray(position_ids[:cut], dtype=np.uint32), row_starts)
    return PackedFlat(
        np.asarray(input_ids[:cut], dtype=np.uint32),  # views: the output is written straight from them
        positions,
        np.asarray(loss_mask[:cut], dtype=np.bool_),
        np.arange(n_rows + 1, dtype=np.int64) * seq_len,
        stats,
    )


def pack_dense_tails_flat(
    input_ids: UInt32[np.ndarray, " total"],
    position_ids: UInt32[np.ndarray, " total"],
    loss_mask: Bool[np.ndarray, " total"],
    segment_offsets: Int64[np.ndarray, " n_plus_1"],
    seq_len: int,
) -> PackedFlat:
    """Dense packing of the leftover tails of all reduce groups, laid end to end in key order (the final pass).

    Each tail is what dense packing of one group could not fill into a whole row: the remainder of the document cut
    at the group's last row end (a *continuation*, its positions do not start at 0) and the documents after it.
    The continuations restart at position 0 (as at any row head), everything is cut into ``seq_len`` rows, and
    only the incomplete last row of the whole run is dropped. Stats count only what the groups did not: documents
    that start here (``docs_in``), tokens carried here (``tokens_in``, also ``extra["tail_tokens"]``) and the
    rows made of them (``extra["tail_rows"]``); a continuation that is lost counts its document as truncated.

    Example:
        >>> ids = np.arange(7, dtype=np.uint32)
        >>> pos = np.array([5, 6, 0, 1, 2, 3, 4], np.uint32)  # a continuation, then a whole document
        >>> out = pack_dense_tails_flat(ids, pos, np.ones(7, bool), np.array([0, 2, 7]), 4)
        >>> out.rows()[0]["position_ids"].tolist(), out.stats.tokens_dropped, out.stats.docs_truncated
        ([0, 1, 0, 1], 3, 1)
    """
    check_seq_len(seq_len)
    offsets = np.asarray(segment_offsets, dtype=np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    nonempty = ends > starts
    pos = np.array(position_ids, dtype=np.uint32)
    first = np.zeros(len(starts), dtype=np.uint32)
    first[nonempty] = pos[starts[nonempty]]
    cont = first != 0
    for a, b, f in zip(starts[cont].tolist(), ends[cont].tolist(), first[cont].tolist()):  # one per group at most
        # Only the continuation's leading run restarts at 0 (segments after it already start at 0).
        off = np.flatnonzero(pos[a:b] != f + np.arange(b - a, dtype=np.uint32))
        view = pos[a : a + (int(off[0]) if len(off) else b - a)]
        view -= np.uint32(f)
    packed = pack_dense_flat(input_ids, pos, loss_mask, offsets, seq_len)
    cut = packed.stats.tokens_out
    lost_whole = nonempty & (starts >= cut)
    truncated = ((starts < cut) & (ends > cut)) | (cont & lost_whole)
    total = int(offsets[-1])
    packed.stats = PackStats(
        docs_in=int(np.count_nonzero(~cont)),
        docs_dropped=int(np.count_nonzero(lost_whole & ~cont)),
        docs_truncated=int(np.count_nonzero(truncated)),
        tokens_in=total,
        tokens_out=cut,
        tokens_dropped=total - cut,
        tokens_truncated=int((ends[truncated] - np.maximum(starts[truncated], cut)).sum()),
        rows=packed.stats.rows,
        extra={"tail_tokens": total, "tail_rows": packed.stats.rows},
    )
    return packed


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


def greedy_row_count(lengths: Int64[np.ndarray, " n"], seq_len: int) -> int:
    """How many rows :func:`greedy_assign` fills with items of length ``1..seq_len``, without its per-item loop.

    A row that starts at item ``i`` ends before the first item that does not fit: ``jump[i]``, the last ``j`` with
    ``sum(lengths[i:j]) <= seq_len`` (one ``searchsorted`` for every ``i``). The row count is the number of jumps
    from item 0 to the end, counted by doubling the jump table: O(n log rows), all vectorised.

    Example:
        >>> greedy_row_count(np.array([3, 2, 2, 1]), 4), int(greedy_assign(np.array([3, 2, 2, 1]), 4)[0][-1]) + 1
        (3, 3)
    """
    n = len(lengths)
    if not n:
        return 0
    cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=cum[1:])
    jumps = [np.searchsorted(cum, cum + seq_len, side="right") - 1]  # jumps[k][i]: the item 2**k rows after i
    while jumps[-1][0] < n:
        jumps.append(jumps[-1][jumps[-1]])
    rows, item = 1, 0  # the last row, then every whole jump that stays short of the end
    for k in range(len(jumps) - 1, -1, -1):
        if jumps[k][item] < n:
            item = int(jumps[k][item])
            rows += 1 << k
    return rows


def output_array(n: int, dtype: type) -> np.ndarray:
    """``np.empty(n, dtype)`` for a large output column that is written once, in memory the kernel backs with 4 KiB
    pages (anonymous, private, ``MADV_NOHUGEPAGE``) instead of the transparent huge pages numpy asks for.

    The first write to fresh memory is most of a cold pack's cost (an output is ~8 bytes per token). numpy advises
    huge pages for every array over 4 MiB; where memory is fragmented the kernel then compacts memory on the first
    touch of each 2 MiB page. Measured on the 2-core development machine under load, first-touching 1.2 GB took
    0.7-2.9 s of kernel time with huge pages and a steady 0.43-0.48 s with 4 KiB pages (and packing 132M tokens
    cold, 2.4 s of its 2.7 s CPU). The price: on an idle machine with free huge pages they are faster (a cold
    39.6M-token pack spent 0.06 s in the kernel with them, 0.18 s without); 4 KiB pages are the predictable choice.
    Small arrays, and platforms without ``madvise``, get ``np.empty``.

    Example:
        >>> a = output_array(10, np.uint32); a[:] = 7; a.sum()
        np.uint64(70)
    """
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes < _OUTPUT_MMAP_MIN or not hasattr(mmap, "MADV_NOHUGEPAGE") or not hasattr(mmap, "MAP_PRIVATE"):
        return np.empty(n, dtype=dtype)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype=dtype, count=n)  # the array keeps the mapping alive; unmapped with it


_OUTPUT_MMAP_MIN = 4 << 20  # numpy's own huge-page threshold: below it both allocations are the same


def copy_runs(
    out: np.ndarray, source: np.ndarray, src_starts: Iterable[int], dst_starts: Iterable[int], lengths: Iterable[int]
) -> None:
    """``out[d : d + n] = source[s : s + n]`` for every run, in place.

    Through ``memoryview`` slices: one memcpy per run and about 0.2 µs of Python, less than numpy's slice
    assignment or a ``np.concatenate`` of views (which also allocates), and no per-token index arrays.

    Example:
        >>> out = np.zeros(5, np.uint32)
        >>> copy_runs(out, np.arange(10, 15, dtype=np.uint32), [3, 0], [0, 2], [2, 3])
        >>> out.tolist()
        [13, 14, 10, 11, 12]
    """
    dst, src = memoryview(out), memoryview(np.ascontiguousarray(source))
    for s, d, n in zip(src_starts, dst_starts, lengths):
        dst[d : d + n] = src[s : s + n]


def layout_rows(
    input_ids: UInt32[np.ndarray, " total"],
    position_ids: UInt32[np.ndarray, " total"],
    loss_mask: Bool[np.ndarray, " total"],
    piece_start: Int64[np.ndarray, " p"],
    piece_len: Int64[np.ndarray, " p"],
    bins: Int64[np.ndarray, " p"],
    order_in_row: Int64[np.ndarray, " p"],
    n_rows: int,
    seq_len: int,
    pad_token_id: int | None,
    pad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write pieces (slices of the flat arrays) into rows: ``(input_ids, position_ids, loss_mask, row_offsets)``.

    Piece ``i`` is ``[piece_start[i], piece_start[i] + piece_len[i])``, goes to row ``bins[i]`` and is laid out
    in ascending ``order_in_row`` inside it. Rows are padded to ``seq_len`` (pad id, position 0, loss False) when
    ``pad``; otherwise they are as long as their pieces. Positions of a piece are restarted at 0. Any packer that
    assigns whole pieces to rows can use this.

    Cost: each output column is allocated once at its final size (``np.empty``) and written once, piece by piece
    (:func:`copy_runs`); nothing else the size of the data is allocated. A piece whose positions are one run
    (every piece of tokenized documents) gets ``0..n-1`` from a small template instead of a copy and a shift; a
    constant ``loss_mask`` (:func:`~hfprep.schema.constant_value`: all True for pre-training) is filled, not copied.

    Example:
        >>> ids = np.arange(10, 15, dtype=np.uint32)
        >>> pos = np.array([0, 1, 2, 0, 1], np.uint32)
        >>> out = layout_rows(ids, pos, np.ones(5, bool), np.array([0, 3]), np.array([3, 2]), np.array([0, 0]),
        ...                   np.array([1, 0]), 1, 6, 0, True)
        >>> out[0].tolist(), out[1].tolist()
        ([13, 14, 10, 11, 12, 0], [0, 1, 0, 1, 2, 0])
    """
    if pad and pad_token_id is None:
        raise ConfigError("padded rows need a pad_token_id (hfprep defaults it to the tokenizer's eos)")
    placement = np.lexsort((order_in_row, bins))
    src_start = piece_start[placement]
    out_len = piece_len[placement]
    piece_rows = bins[placement]
    row_fill = np.bincount(bins, weights=piece_len, minlength=n_rows).astype(np.int64)
    fill_before = np.zeros(n_rows + 1, dtype=np.int64)  # real tokens in the rows before each row
    np.cumsum(row_fill, out=fill_before[1:])
    row_offsets = np.arange(n_rows + 1, dtype=np.int64) * seq_len if pad else fill_before
    # A piece's place: its row's start plus the pieces before it in that row (pieces are in row order here).
    dst_start = np.zeros(len(out_len), dtype=np.int64)
    np.cumsum(out_len[:-1], out=dst_start[1:])
    dst_start += (row_offsets[:-1] - fill_before[:-1])[piece_rows]
    total = int(row_offsets[-1])

    ids = np.asarray(input_ids, dtype=np.uint32)
    pos = np.asarray(position_ids, dtype=np.uint32)
    mask = np.asarray(loss_mask, dtype=np.bool_)
    out_ids = output_array(total, np.uint32)
    out_pos = output_array(total, np.uint32)
    out_mask = output_array(total, np.bool_)
    mask_value = constant_value(mask)
    if mask_value is None and len(mask) and mask.all():
        mask_value = True
    if mask_value is not None:
        out_mask.fill(mask_value)
    if pad:
        for r in np.flatnonzero(row_fill < seq_len).tolist():
            a, b = int(row_offsets[r] + row_fill[r]), int(row_offsets[r + 1])
            out_ids[a:b] = pad_token_id
            out_pos[a:b] = 0
            out_mask[a:b] = False

    starts, dsts, lens = src_start.tolist(), dst_start.tolist(), out_len.tolist()
    copy_runs(out_ids, ids, starts, dsts, lens)
    if mask_value is None:
        copy_runs(out_mask, mask, starts, dsts, lens)

    # Positions: a piece whose positions are one run (segments count up by 1, the row contract, so that is when
    # its last position is first + n - 1: a restart inside would leave it at most n - 2) restarts at 0, so it is
    # 0..n-1 whatever it held. Other pieces (re-packed rows holding several segments) are copied and only their
    # leading segment is shifted (position_fix_helper's rule: a segment ends where positions drop).
    first_pos = pos[src_start].astype(np.int64) if len(src_start) else np.zeros(0, np.int64)
    last_pos = pos[src_start + out_len - 1].astype(np.int64) if len(src_start) else np.zeros(0, np.int64)
    one_run = last_pos == first_pos + out_len - 1
    if len(out_len):
        template = np.arange(int(out_len.max()), dtype=np.uint32)
        runs = np.flatnonzero(one_run)
        copy_runs(out_pos, template, itertools.repeat(0), dst_start[runs].tolist(), out_len[runs].tolist())
    multi = np.flatnonzero(~one_run)
    copy_runs(out_pos, pos, src_start[multi].tolist(), dst_start[multi].tolist(), out_len[multi].tolist())
    for d, n, f in zip(dst_start[multi].tolist(), out_len[multi].tolist(), first_pos[multi].tolist(), strict=True):
        if f:
            view = out_pos[d : d + n]
            drop = np.flatnonzero(view[1:] < view[:-1])
            view[: int(drop[0]) + 1 if len(drop) else n] -= np.uint32(f)

    return out_ids, out_pos, out_mask, row_offsets


# The same signature as pack_dense_flat on purpose: every registered packer is a FlatPacker.
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
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    # A document's trailing tokens that would read as padding are left out (schema.trailing_padding_like), so the
    # padding of every row is exactly what schema.padding_mask finds.
    strip = trailing_padding_like(input_ids, position_ids, loss_mask, offsets[:-1], lengths, pad_token_id)
    eff_len = lengths - strip
    row, off = greedy_assign(eff_len, seq_len)
    row[(eff_len == 0) & (lengths > 0)] = -1
    keep = row >= 0
    n_rows = int(row.max()) + 1 if len(row) else 0
    # In-order greedy keeps documents in input order, so a row is a few contiguous runs of the input (one unless a
    # dropped or shortened document sits inside it): copy run by run, a memcpy each, no per-token index arrays.
    kept = np.flatnonzero(keep)
    new_run = np.ones(len(kept), dtype=np.bool_)
    new_run[1:] = (np.diff(kept) != 1) | (np.diff(row[kept]) != 0) | (strip[kept[:-1]] > 0)
    first = kept[new_run]
    run_len = np.add.reduceat(eff_len[kept], np.flatnonzero(new_run)) if len(kept) else np.zeros(0, np.int64)
    src = offsets[first].tolist()
    dst = (row[first] * seq_len + off[first]).tolist()
    run_len = run_len.tolist()
    columns = []
    for source, fill, dtype in (
        (input_ids, pad_token_id, np.uint32),
        (position_ids, 0, np.uint32),
        (loss_mask, False, np.bool_),
    ):
        source = np.asarray(source, dtype=dtype)
        out = np.full(n_rows * seq_len, fill, dtype=dtype)
        for s, d, n in zip(src, dst, run_len):
            out[d : d + n] = source[s : s + n]
        columns.append(out)
    ids, pos, mask = columns
    row_offsets = np.arange(n_rows + 1, dtype=np.int64) * seq_len
    dropped = row < 0
    kept_tokens = int(eff_len[~dropped].sum())
    stats = PackStats(
        docs_in=len(lengths),
        docs_dropped=int(dropped.sum()),
        tokens_in=int(lengths.sum()),
        tokens_out=kept_tokens,
        tokens_dropped=int(lengths.sum()) - kept_tokens,
        pad_tokens=n_rows * seq_len - kept_tokens,
        rows=n_rows,
    )
    padding_like = int(strip[eff_len <= seq_len].sum())
    if padding_like:
        stats.extra["padding_like_tokens"] = padding_like
    return PackedFlat(ids, pos, mask, row_offsets, stats)


FlatPacker = Callable[..., PackedFlat]
PACKERS: dict[str, FlatPacker] = {"dense": pack_dense_flat, "no_incomplete": pack_no_incomplete_flat}
"""Flat packers by strategy name. Other modules register more (e.g. ``bfd``)."""


def get_packer(strategy: str) -> FlatPacker:
    """The flat packer registered as ``strategy`` (``hfprep.pack`` registers ``bfd`` when it is imported)."""
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

    Positions restart at 0 at every segment start and at every row start (a document cut at a row end continues
    at 0 in the next row: :func:`position_fix_helper`). This is one list, so its incomplete tail is dropped; the
    map-reduce transform calls this per reduce group but carries each group's tail to one final *dense tails*
    pass (:func:`pack_dense_tails_flat`), so a run loses at most one partial row in total, not one per group.

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
    """Pack with the named strategy (``dense``, ``no_incomplete``, or any registered in :data:`PACKERS`) (seed API).

    One list: ``dense`` drops its incomplete tail here (see :func:`pack_dense` for the dense tails of a map-reduce
    run); ``pad_token_id`` is used by the padded packers only.
    """
    return get_packer(strategy)(*rows_to_flat(rows), seq_len, pad_token_id).rows()
