"""Tokenized documents as flat arrays: :class:`FlatRows` and the piece assembly every strategy goes through.

Every strategy describes a document as a list of *pieces* (a special token or a span of encoded text, each with
a loss flag); :func:`assemble_pieces` turns the pieces of a whole batch into flat arrays without a per-token loop.
The strategy modules (:mod:`hfprep.tokenization.fim`, :mod:`hfprep.tokenization.chat`) and the batched stage
(:mod:`hfprep.tokenization.stage`) build on these, so none of them imports another to share them.

Example:
    >>> import numpy as np
    >>> positions_from_offsets(np.array([0, 3, 5])).tolist()
    [0, 1, 2, 0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from jaxtyping import Bool, Int64, UInt32

from ..schema import TokenizedRow, flat_to_table


@dataclass
class FlatRows:
    """A batch of tokenized documents as flat arrays + offsets (the Arrow list layout, without Arrow).

    ``doc_offsets[i]:doc_offsets[i+1]`` is document ``i``; ``kept`` holds the input-row index of each document
    (rows dropped by the strategy are absent).
    """

    input_ids: UInt32[np.ndarray, " total"]
    position_ids: UInt32[np.ndarray, " total"]
    loss_mask: Bool[np.ndarray, " total"]
    doc_offsets: Int64[np.ndarray, " n_plus_1"]
    kept: Int64[np.ndarray, " n"]

    @property
    def num_docs(self) -> int:
        return len(self.doc_offsets) - 1

    def row(self, i: int) -> TokenizedRow:
        a, b = int(self.doc_offsets[i]), int(self.doc_offsets[i + 1])
        return {
            "input_ids": self.input_ids[a:b],
            "position_ids": self.position_ids[a:b],
            "loss_mask": self.loss_mask[a:b],
        }

    def to_arrow(self) -> pa.Table:
        """Arrow table with ``list<uint32>``, ``list<uint32>``, ``list<bool>`` columns (zero-copy for the values)."""
        return flat_to_table(self.input_ids, self.position_ids, self.loss_mask, self.doc_offsets)


def positions_from_offsets(offsets: Int64[np.ndarray, " n_plus_1"]) -> UInt32[np.ndarray, " total"]:
    """``arange`` restarted at every offset: the position ids of documents laid end to end."""
    total = int(offsets[-1])
    lengths = np.diff(offsets)
    if total < 2**32:  # uint32 arithmetic: half the memory traffic of int64, exact below 2**32 tokens
        positions = np.arange(total, dtype=np.uint32)
        positions -= np.repeat(np.asarray(offsets[:-1]).astype(np.uint32), lengths)
        return positions
    return (np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)).astype(np.uint32)


def _gather_pieces(
    source: np.ndarray, piece_start: np.ndarray, piece_len: np.ndarray, out_starts: np.ndarray, total: int
) -> np.ndarray:
    """``concat(source[s : s + n] for s, n in pieces)``.

    Fast path (pretrain, sft): when the multi-token pieces appear in source order and do not overlap, they are
    moved with boolean masks built from run lengths and the single tokens (specials) are scattered, instead of
    building an int64 index per token (several times less memory traffic). Otherwise one int64 gather.
    """
    multi = piece_len > 1
    ms, ml = piece_start[multi], piece_len[multi]
    if len(ms) == 0 or not np.all(ms[1:] >= ms[:-1] + ml[:-1]):
        index = np.arange(total, dtype=np.int64) + np.repeat(piece_start - out_starts[:-1], piece_len)
        return source[index]

    out = np.empty(total, dtype=source.dtype)
    end = ms + ml
    gaps = np.diff(ms, prepend=0) - np.r_[0, ml[:-1]]  # source tokens skipped before each multi piece
    if not gaps[1:].any():
        moved = source[ms[0] : end[-1]]
    else:
        # Bool masks from run lengths: np.repeat over a few long runs is close to a memset.
        runs = np.empty(2 * len(ms) + 1, dtype=np.int64)
        runs[0:-1:2], runs[1:-1:2], runs[-1] = gaps, ml, len(source) - end[-1]
        flags = np.zeros(len(runs), dtype=np.bool_)
        flags[1::2] = True
        moved = source[np.repeat(flags, runs)]
    out[np.repeat(multi, piece_len)] = moved
    single = piece_len == 1
    out[out_starts[:-1][single]] = source[piece_start[single]]
    return out


def assemble_pieces(
    source: UInt32[np.ndarray, " src"],
    piece_start: Int64[np.ndarray, " p"],
    piece_len: Int64[np.ndarray, " p"],
    piece_loss: Bool[np.ndarray, " p"],
    pieces_per_doc: Int64[np.ndarray, " n"],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate pieces (slices of ``source``) into documents, with one gather and no per-token loop.

    Piece ``j`` is ``source[piece_start[j] : piece_start[j] + piece_len[j]]`` with loss flag ``piece_loss[j]``;
    the first ``pieces_per_doc[0]`` pieces form document 0, and so on.

    Returns ``(input_ids, position_ids, loss_mask, doc_offsets)``.
    """
    piece_len = np.asarray(piece_len, dtype=np.int64)
    out_starts = np.zeros(len(piece_len) + 1, dtype=np.int64)
    np.cumsum(piece_len, out=out_starts[1:])
    total = int(out_starts[-1])
    input_ids = _gather_pieces(source, np.asarray(piece_start, np.int64), piece_len, out_starts, total)
    loss_mask = np.repeat(np.asarray(piece_loss, dtype=np.bool_), piece_len)
    piece_ends = np.zeros(len(pieces_per_doc) + 1, dtype=np.int64)
    np.cumsum(pieces_per_doc, out=piece_ends[1:])
    doc_offsets = out_starts[piece_ends]
    return input_ids, positions_from_offsets(doc_offsets), loss_mask, doc_offsets


def frame_documents(
    values: UInt32[np.ndarray, " src"],
    offsets: Int64[np.ndarray, " n_plus_1"],
    prefix: Sequence[int] = (),
    suffix: Sequence[int] = (),
) -> tuple[UInt32[np.ndarray, " total"], Int64[np.ndarray, " n_plus_1"]]:
    """Documents ``prefix + values[offsets[i]:offsets[i + 1]] + suffix`` laid end to end: ``(ids, doc_offsets)``.

    What pre-training documents are (``[bos] text [eos]``), built with one copy of the text ids: a slice per
    document when documents are long, one boolean scatter when they are short.

    Example:
        >>> ids, off = frame_documents(np.array([5, 6, 7], np.uint32), np.array([0, 2, 3]), [1], [2])
        >>> ids.tolist(), off.tolist()
        ([1, 5, 6, 2, 1, 7, 2], [0, 4, 7])
    """
    k, m = len(prefix), len(suffix)
    n = len(offsets) - 1
    offsets = np.asarray(offsets, dtype=np.int64)
    doc_offsets = offsets - offsets[0] + (k + m) * np.arange(n + 1, dtype=np.int64)
    total = int(doc_offsets[-1])
    ids = np.empty(total, dtype=np.uint32)
    text_ids = values[offsets[0] : offsets[-1]]
    if n and len(text_ids) >= LONG_DOCUMENT * n:
        starts = (doc_offsets[:-1] + k).tolist()
        bounds = (offsets - offsets[0]).tolist()
        for i, a in enumerate(starts):
            ids[a : a + bounds[i + 1] - bounds[i]] = text_ids[bounds[i] : bounds[i + 1]]
    else:
        is_text = np.ones(total, dtype=np.bool_)
        for j in range(k):
            is_text[doc_offsets[:-1] + j] = False
        for j in range(m):
            is_text[doc_offsets[1:] - m + j] = False
        ids[is_text] = text_ids
    for j, tok in enumerate(prefix):
        ids[doc_offsets[:-1] + j] = tok
    for j, tok in enumerate(suffix):
        ids[doc_offsets[1:] - m + j] = tok
    return ids, doc_offsets


LONG_DOCUMENT = 64
"""Mean tokens per document from which :func:`frame_documents` copies document by document."""


def with_prefix(flat: FlatRows, prefix: Sequence[int], loss: bool) -> FlatRows:
    """Put ``prefix`` (e.g. the bos) before every document, with one scatter (no per-row loop)."""
    if not prefix or flat.num_docs == 0:
        return flat
    k, n = len(prefix), flat.num_docs
    off = flat.doc_offsets + k * np.arange(n + 1, dtype=np.int64)
    total = int(off[-1])
    is_prefix = np.zeros(total, dtype=np.bool_)
    slots = (off[:-1, None] + np.arange(k)).ravel()
    is_prefix[slots] = True
    ids = np.empty(total, dtype=np.uint32)
    mask = np.empty(total, dtype=np.bool_)
    ids[slots] = np.tile(np.asarray(prefix, dtype=np.uint32), n)
    mask[slots] = loss
    keep = ~is_prefix
    ids[keep] = flat.input_ids
    mask[keep] = flat.loss_mask
    return FlatRows(ids, positions_from_offsets(off), mask, off, flat.kept)


def empty_flat() -> FlatRows:
    z = np.zeros(0, dtype=np.uint32)
    return FlatRows(z, z.copy(), np.zeros(0, dtype=np.bool_), np.zeros(1, dtype=np.int64), np.zeros(0, np.int64))
