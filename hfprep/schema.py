"""The row contract, defined once: columns, dtypes, ``datasets.Features``, the padding rule, the attention mask.

A packed (or tokenized) row is three lists of the same length: ``input_ids`` uint32, ``position_ids`` uint32
(every segment counts ``0, 1, 2, ...``) and ``loss_mask`` bool. Every stage that reads rows uses this module, so
the packers, ``validate``, the quality report, the collators, ``inspect`` and the KD builder agree token for token.

Padding rule (:func:`padding_mask`): the padding of a row is the longest run at its end of tokens that are
``pad_token_id`` at position 0 with ``loss_mask`` False. It is unambiguous because the padded packers never leave
such a token at the end of a piece of real data (:func:`trailing_padding_like`): a one-token segment with no loss
that reads as padding carries no training signal, so they leave it out and count it in ``tokens_dropped`` (and
``padding_like_tokens``). A real one-token segment *with* loss (e.g. the last piece of a split document being the
eos, when the pad id is the eos id) is never padding. Whether a dataset is padded at all is a property of its
packing (:func:`output_is_padded`): ``dense`` and ``bfd`` with ``pad: false`` write no padding.

Attention (:func:`causal_mask_from_positions`): a segment starts where ``position_ids == 0`` (and at the row
start); token ``i`` may attend to ``j`` iff ``j <= i`` and both are in the same segment.

Example:
    >>> import numpy as np
    >>> ids = np.array([5, 6, 2, 2], np.uint32); pos = np.array([0, 1, 0, 0], np.uint32)
    >>> loss = np.array([True, True, False, False])
    >>> padding_mask(ids, pos, loss, np.array([0, 4]), pad_token_id=2).tolist()
    [False, False, True, True]
    >>> causal_mask_from_positions(np.array([0, 1, 0])).astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Features, List, Value
from jaxtyping import Bool, Int64, UInt32

from .errors import ConfigError

TOKEN_DTYPE = np.uint32
POSITION_DTYPE = np.uint32
MASK_DTYPE = np.bool_

ROW_COLUMNS: tuple[str, str, str] = ("input_ids", "position_ids", "loss_mask")
ROW_DTYPES: dict[str, type] = {"input_ids": TOKEN_DTYPE, "position_ids": POSITION_DTYPE, "loss_mask": MASK_DTYPE}
ROW_FEATURES_SPEC: dict[str, str] = {"input_ids": "uint32", "position_ids": "uint32", "loss_mask": "bool"}
"""``datasets`` dtype of each column's values."""
ROW_ARROW_TYPES: dict[str, pa.DataType] = {
    "input_ids": pa.list_(pa.uint32()),
    "position_ids": pa.list_(pa.uint32()),
    "loss_mask": pa.list_(pa.bool_()),
}

SOURCE_COLUMN = "source"
"""Optional output column of a mixture: the source index of every token (``SOURCE_PAD`` exactly on padding)."""
SOURCE_PAD = -1
MAX_SOURCES = 127
"""Most sources one mixture may have (the ``source`` column is int16)."""

Row = dict[Any, Any]
"""A raw input row, as the seed notebook calls it."""

TokenizedRow = dict[str, UInt32[np.ndarray, " example_len"] | Bool[np.ndarray, " example_len"]]
"""``{"input_ids": uint32, "position_ids": uint32, "loss_mask": bool}``, all the same length."""

MAX_LIST_VALUES = 2**31 - 1
"""Values one Arrow ``list`` array can hold (int32 offsets); :func:`flat_to_table` starts a new chunk before it."""


def row_features():
    """``datasets.Features`` of rows (explicit, so ``input_ids`` is not stored as int32/int64).

    Example:
        >>> row_features()["input_ids"]
        List(Value('uint32'))
    """
    return Features({name: List(Value(dtype)) for name, dtype in ROW_FEATURES_SPEC.items()})


DOCUMENT_COLUMNS: tuple[str, str] = ("input_ids", "loss_mask")
"""A tokenized, unpacked document (the ``documents`` config): its ids and loss mask. Positions are not stored:
every document counts ``0, 1, 2, ...`` (the packers' ``documents_to_rows`` rebuilds them)."""
DOCUMENT_ARROW_TYPES: dict[str, pa.DataType] = {"input_ids": pa.list_(pa.uint32()), "loss_mask": pa.list_(pa.bool_())}
DOCUMENT_SOURCE_TYPE = pa.int16()
"""A mixture's documents also carry ``source``: the index of the source each document came from."""


def document_features(with_source: bool = False):
    """``datasets.Features`` of the ``documents`` config (``source`` for a mixture).

    Example:
        >>> document_features(with_source=True)["source"]
        Value('int16')
    """
    feats = Features({name: List(Value(ROW_FEATURES_SPEC[name])) for name in DOCUMENT_COLUMNS})
    if with_source:
        feats[SOURCE_COLUMN] = Value("int16")
    return feats


def documents_from_rows(table: pa.Table, source: pa.Array | pa.ChunkedArray | None = None) -> pa.Table:
    """Tokenized documents (one per row, as the tokenize stage writes them) -> the ``documents`` config's columns.

    Positions are dropped because they carry nothing: a tokenized document's ``position_ids`` are ``0..n-1``, which
    is checked here (a row that holds several segments could not be rebuilt from its ids alone).

    Example:
        >>> t = pa.table({"input_ids": pa.array([[5, 6]], pa.list_(pa.uint32())),
        ...               "position_ids": pa.array([[0, 1]], pa.list_(pa.uint32())), "loss_mask": [[True, False]]})
        >>> documents_from_rows(t).to_pydict()
        {'input_ids': [[5, 6]], 'loss_mask': [[True, False]]}
    """
    positions = table.column("position_ids")
    lengths = pc.list_value_length(positions).to_numpy(zero_copy_only=False).astype(np.int64)
    values = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in positions.chunks] or [np.zeros(0)])
    if not np.array_equal(values, _document_positions(lengths)):
        raise ConfigError("documents: a tokenized row holds positions other than 0..n-1; only whole documents are kept")
    out = table.select(list(DOCUMENT_COLUMNS))
    if source is not None:
        out = out.append_column(SOURCE_COLUMN, pa.chunked_array([source]).cast(DOCUMENT_SOURCE_TYPE)
                                if isinstance(source, pa.Array) else source.cast(DOCUMENT_SOURCE_TYPE))
    return out


def _document_positions(lengths: np.ndarray) -> np.ndarray:
    """``0..n-1`` for every document length ``n``, end to end."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - starts


def output_is_padded(packing: str | None, packing_kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether a packing writes padding: every packer but ``dense`` and ``bfd`` with ``pad: false``.

    Example:
        >>> output_is_padded("dense"), output_is_padded("bfd", {"pad": False}), output_is_padded("no_incomplete")
        (False, False, True)
    """
    if packing == "dense":
        return False
    return bool((packing_kwargs or {}).get("pad", True))


# --- padding --------------------------------------------------------------------------------------------------


def pad_candidates(
    input_ids: np.ndarray, position_ids: np.ndarray, loss_mask: np.ndarray, pad_token_id: int | None
) -> np.ndarray:
    """Tokens that look like padding: position 0, no loss and (when ``pad_token_id`` is given) the pad id.

    Only a *trailing run* of them is padding (:func:`padding_mask`).

    Example:
        >>> pad_candidates(np.array([2, 2, 3]), np.array([0, 1, 0]), np.array([0, 0, 0], bool), 2).tolist()
        [True, False, False]
    """
    cand = (np.asarray(position_ids) == 0) & ~np.asarray(loss_mask, dtype=np.bool_)
    if pad_token_id is not None:
        cand &= np.asarray(input_ids) == pad_token_id
    return cand


def padding_mask(
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    loss_mask: np.ndarray,
    row_offsets: Int64[np.ndarray, " rows_plus_1"],
    pad_token_id: int | None,
) -> Bool[np.ndarray, " n"]:
    """THE padding rule on flat rows: per row, the longest trailing run of :func:`pad_candidates`.

    ``pad_token_id=None`` drops the id condition (for callers that do not know it, like a collator without one).

    Example:
        >>> ids = np.array([7, 2, 2, 2], np.uint32); pos = np.array([0, 0, 0, 0], np.uint32)
        >>> padding_mask(ids, pos, np.array([1, 1, 0, 0], bool), np.array([0, 2, 4]), 2).tolist()
        [False, False, True, True]
    """
    n = len(position_ids)
    offsets = np.asarray(row_offsets, dtype=np.int64)
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    cand = pad_candidates(input_ids, position_ids, loss_mask, pad_token_id)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    idx = np.where(cand, -1, np.arange(n, dtype=np.int64))
    last_real = starts - 1  # a row with no real token is padding from its start
    if nonempty.any():
        last_real[nonempty] = np.maximum(np.maximum.reduceat(idx, starts[nonempty]), starts[nonempty] - 1)
    row_of = np.repeat(np.arange(len(starts)), lengths)
    return np.arange(n, dtype=np.int64) > last_real[row_of]


def padding_start(
    input_ids: np.ndarray | None, position_ids: np.ndarray, loss_mask: np.ndarray, pad_token_id: int | None
) -> Int64[np.ndarray, " batch"]:
    """Index where each row's padding starts in a (B, L) batch (``L`` when none): :func:`padding_mask`'s rule,
    vectorised over the batch's 2-D layout (the collators' hot path).

    Example:
        >>> pos = np.array([[0, 1, 0, 0], [0, 1, 2, 3]]); loss = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
        >>> padding_start(None, pos, loss, None).tolist()
        [2, 4]
    """
    cand = pad_candidates(input_ids if input_ids is not None else 0, position_ids, loss_mask,
                          pad_token_id if input_ids is not None else None)
    length = cand.shape[1]
    not_cand_rev = ~cand[:, ::-1]
    has_real = not_cand_rev.any(axis=1)
    last_real = length - 1 - np.argmax(not_cand_rev, axis=1)
    return np.where(has_real, last_real + 1, 0).astype(np.int64)


@dataclasses.dataclass
class RowSegments:
    """The rows of a batch measured by the row contract: what validation, the card and the packing report count.

    ``pad_per_row``: each row's trailing padding (:func:`padding_mask`); ``seg_start``/``seg_len``/``seg_row``: every
    segment (:func:`segment_bounds`); ``loss_tokens``: tokens with loss (padding never has any).
    """

    row_len: np.ndarray
    pad_per_row: np.ndarray
    seg_start: np.ndarray
    seg_len: np.ndarray
    seg_row: np.ndarray
    loss_tokens: int

    @property
    def real_per_row(self) -> np.ndarray:
        return self.row_len - self.pad_per_row


def row_segments(
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    loss_mask: np.ndarray,
    row_offsets: np.ndarray,
    pad_token_id: int | None,
    padded: bool | None = True,
) -> RowSegments:
    """Measure flat rows (one pass or two over the tokens, nothing 8 bytes wide per token): see :class:`RowSegments`.
    ``padded=False``: the packing writes no padding, so none is looked for.

    Example:
        >>> ids = np.array([5, 6, 7, 0, 0], np.uint32); pos = np.array([0, 1, 0, 0, 0], np.uint32)
        >>> r = row_segments(ids, pos, np.array([1, 1, 1, 0, 0], bool), np.array([0, 5]), pad_token_id=0)
        >>> r.pad_per_row.tolist(), r.seg_len.tolist(), r.loss_tokens
        ([2], [2, 1], 3)
    """
    offsets = np.asarray(row_offsets, dtype=np.int64)
    row_len = np.diff(offsets)
    n = len(position_ids)
    if padded is False or n == 0:
        pad_per_row = np.zeros(len(row_len), dtype=np.int64)
    elif len(row_len) and (row_len == row_len[0]).all():  # fixed-length rows: the 2-D rule, no per-token index
        width = int(row_len[0])
        shape = (len(row_len), width)
        real = padding_start(np.asarray(input_ids).reshape(shape), np.asarray(position_ids).reshape(shape),
                             np.asarray(loss_mask).reshape(shape), pad_token_id)
        pad_per_row = width - real
    else:
        pad_end = np.concatenate([[0], np.cumsum(padding_mask(input_ids, position_ids, loss_mask, offsets, pad_token_id))])
        pad_per_row = (pad_end[offsets[1:]] - pad_end[offsets[:-1]]).astype(np.int64)
    starts, ends, seg_row = segment_bounds(position_ids, pad_per_row, offsets)
    seg_len = ends - starts
    return RowSegments(row_len, pad_per_row, starts, seg_len, seg_row, int(np.count_nonzero(loss_mask)))


def trailing_padding_like(
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    loss_mask: np.ndarray,
    piece_start: Int64[np.ndarray, " p"],
    piece_len: Int64[np.ndarray, " p"],
    pad_token_id: int | None,
) -> Int64[np.ndarray, " p"]:
    """How many tokens at the end of each piece would read as padding once the piece is laid out in a row.

    A piece's positions restart at 0, so its first token is at position 0 wherever it came from. Padded packers
    leave these tokens out (they are one-token segments with no loss: no training signal), which is what makes
    :func:`padding_mask` exact on their output. Only the pieces whose last token is a candidate are walked, so
    the cost is per piece, not per token, on real data (whose documents end with an eos that has loss).

    Example:
        >>> ids = np.array([5, 2, 7, 2], np.uint32); pos = np.array([0, 0, 0, 1], np.uint32)
        >>> loss = np.array([True, False, True, False])
        >>> trailing_padding_like(ids, pos, loss, np.array([0, 2]), np.array([2, 2]), 2).tolist()
        [1, 0]
    """
    input_ids, position_ids = np.asarray(input_ids), np.asarray(position_ids)
    loss_mask = np.asarray(loss_mask, dtype=np.bool_)
    piece_start = np.asarray(piece_start, dtype=np.int64)
    piece_len = np.asarray(piece_len, dtype=np.int64)
    out = np.zeros(len(piece_len), dtype=np.int64)
    if pad_token_id is None or not len(piece_len):
        return out
    nonempty = piece_len > 0
    last = piece_start + piece_len - 1
    idx = last[nonempty]
    cand = np.zeros(len(piece_len), dtype=np.bool_)
    cand[nonempty] = (
        (np.asarray(input_ids)[idx] == pad_token_id)
        & ~np.asarray(loss_mask, dtype=np.bool_)[idx]
        & ((np.asarray(position_ids)[idx] == 0) | (piece_len[nonempty] == 1))
    )
    for p in np.flatnonzero(cand).tolist():
        a, n = int(piece_start[p]), int(piece_len[p])
        c = pad_candidates(input_ids[a : a + n], position_ids[a : a + n], loss_mask[a : a + n], pad_token_id)
        c[0] |= (input_ids[a] == pad_token_id) and not loss_mask[a]  # the piece's first token lands at position 0
        real = np.flatnonzero(~c)
        out[p] = n - (int(real[-1]) + 1 if len(real) else 0)
    return out


# --- attention --------------------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def segment_ids(position_ids: Any) -> Any:
    """Segment index of every token of (..., L) positions: a segment starts at position 0 and at the row start.

    numpy in, numpy out; a torch tensor in, a tensor out (on its device).

    Example:
        >>> segment_ids(np.array([0, 1, 0, 0, 1])).tolist()
        [1, 1, 2, 3, 3]
    """
    if _is_torch(position_ids):
        import torch  # only for a tensor argument, which means torch is loaded already (numpy callers never pay)

        starts = position_ids == 0
        if position_ids.shape[-1]:
            starts[..., 0] = True
        return torch.cumsum(starts.to(torch.int64), dim=-1)
    pos = np.asarray(position_ids)
    starts = pos == 0
    if pos.shape[-1]:
        starts[..., 0] = True
    return np.cumsum(starts, axis=-1)


def padding_from_counts(pad_per_row: np.ndarray, row_offsets: np.ndarray) -> Bool[np.ndarray, " n"]:
    """The padding mask of rows whose trailing padding counts are ``pad_per_row`` (:class:`RowSegments`).

    Example:
        >>> padding_from_counts(np.array([1, 0, 2]), np.array([0, 2, 3, 6])).astype(int).tolist()
        [0, 1, 0, 0, 1, 1]
    """
    offsets = np.asarray(row_offsets, dtype=np.int64)
    edges = np.zeros(int(offsets[-1]) + 1, dtype=np.int8)
    np.add.at(edges, offsets[1:] - np.asarray(pad_per_row, dtype=np.int64), 1)
    np.add.at(edges, offsets[1:], -1)
    return np.cumsum(edges[:-1], dtype=np.int8).astype(np.bool_)


def segment_bounds(
    position_ids: np.ndarray, pad: np.ndarray, row_offsets: Int64[np.ndarray, " rows_plus_1"]
) -> tuple[Int64[np.ndarray, " s"], Int64[np.ndarray, " s"], Int64[np.ndarray, " s"]]:
    """THE segments of flat rows: ``(start, end, row)`` per segment, flat indices, ``end`` exclusive.

    ``pad``: the padding mask (a bool per token, :func:`padding_mask`) or each row's trailing padding count (an int
    per row). A segment starts at every real (non-padding) token at position 0 and at the start of every non-empty
    row; it ends at the next start or where the row's padding begins. A row of nothing but padding has one empty
    segment (``start == end``), as the card's ``segments`` count has always had it.

    Example:
        >>> pos = np.array([0, 1, 0, 0, 0, 1], np.uint32); pad = np.array([0, 0, 0, 1, 0, 0], bool)
        >>> [a.tolist() for a in segment_bounds(pos, pad, np.array([0, 4, 6]))]
        [[0, 2, 4], [2, 3, 6], [0, 0, 1]]
        >>> [a.tolist() for a in segment_bounds(pos, np.array([1, 0]), np.array([0, 4, 6]))]
        [[0, 2, 4], [2, 3, 6], [0, 0, 1]]
    """
    offsets = np.asarray(row_offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    pad = np.asarray(pad)
    if pad.dtype == np.bool_:  # padding is a trailing run: count it per row
        ends = np.zeros(len(pad) + 1, dtype=np.int64)
        np.cumsum(pad, out=ends[1:])
        pad = ends[offsets[1:]] - ends[offsets[:-1]]
    real_end = offsets[1:] - pad
    is_start = np.asarray(position_ids) == 0
    is_start[offsets[:-1][lengths > 0]] = True
    start = np.flatnonzero(is_start)
    row = np.searchsorted(offsets, start, side="right") - 1
    keep = (start < real_end[row]) | (start == offsets[:-1][row])  # a row's start counts, even in padding
    start, row = start[keep], row[keep]
    end = np.minimum(np.append(start[1:], offsets[-1]), real_end[row])
    return start, end, row


def causal_mask_from_positions(position_ids: Any) -> Any:
    """THE attention mask from positions: (..., L) -> (..., L, L) bool, True where ``i`` may attend to ``j``.

    ``j <= i`` and both in the same segment (:func:`segment_ids`). numpy or torch, vectorised over the batch.

    Example:
        >>> causal_mask_from_positions(np.array([[0, 0]])).astype(int).tolist()
        [[[1, 0], [0, 1]]]
    """
    seg = segment_ids(position_ids)
    length = seg.shape[-1]
    if _is_torch(seg):
        import torch  # only for a tensor argument, which means torch is loaded already (numpy callers never pay)

        causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    else:
        causal = np.tril(np.ones((length, length), dtype=np.bool_))
    return (seg[..., :, None] == seg[..., None, :]) & causal


# --- flat arrays <-> Arrow ------------------------------------------------------------------------------------


def flat_to_table(
    input_ids: np.ndarray, position_ids: np.ndarray, loss_mask: np.ndarray, offsets: np.ndarray
) -> pa.Table:
    """Rows as an Arrow table from flat arrays and row offsets (zero-copy for the values).

    Arrow lists have int32 offsets: rows are cut into chunks of at most :data:`MAX_LIST_VALUES` values each, so
    a group of any size is written (a single row above the limit is an error).

    Example:
        >>> t = flat_to_table(np.arange(3), np.arange(3), np.ones(3, bool), np.array([0, 2, 3]))
        >>> t.column("input_ids").to_pylist()
        [[0, 1], [2]]
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    cols = {
        "input_ids": np.asarray(input_ids, dtype=TOKEN_DTYPE),
        "position_ids": np.asarray(position_ids, dtype=POSITION_DTYPE),
        "loss_mask": np.asarray(loss_mask, dtype=MASK_DTYPE),
    }
    limit = MAX_LIST_VALUES
    bounds = [0]
    if int(offsets[-1]) - int(offsets[0]) > limit:
        lengths = np.diff(offsets)
        if len(lengths) and int(lengths.max()) > limit:
            raise ConfigError(f"a row of {int(lengths.max())} tokens is over Arrow's list limit of {limit} values")
        while bounds[-1] < len(offsets) - 1:
            a = bounds[-1]
            bounds.append(int(np.searchsorted(offsets, offsets[a] + limit, side="right")) - 1)
    else:
        bounds.append(len(offsets) - 1)
    batches = []
    for a, b in itertools.pairwise(bounds):
        lo, hi = int(offsets[a]), int(offsets[b])
        off = pa.array(offsets[a : b + 1] - lo, type=pa.int32())
        arrays = [pa.ListArray.from_arrays(off, _values_array(cols[n][lo:hi])) for n in ROW_COLUMNS]
        batches.append(pa.RecordBatch.from_arrays(arrays, names=list(ROW_COLUMNS)))
    return pa.Table.from_batches(batches)


def table_to_flat(
    table: pa.Table, *, constant_mask_as_view: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows table -> ``(input_ids, position_ids, loss_mask, row_offsets)`` flat numpy arrays.

    Chunk by chunk, so a table of more values than one Arrow list can hold is read too; a single chunk is
    zero-copy for the values. ``constant_mask_as_view``: a ``loss_mask`` that is the same everywhere (all True:
    pre-training rows) comes back as a read-only broadcast of that value, which takes no memory (for callers that
    only read it, like the packers; see :func:`constant_value`).

    Example:
        >>> ids, pos, loss, off = table_to_flat(flat_to_table(np.arange(3), np.arange(3), np.ones(3, bool),
        ...                                                   np.array([0, 2, 3])))
        >>> ids.tolist(), off.tolist()
        ([0, 1, 2], [0, 2, 3])
    """
    lengths = [pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in table.column("input_ids").chunks]
    flat_len = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(flat_len) + 1, dtype=np.int64)
    np.cumsum(np.nan_to_num(flat_len).astype(np.int64), out=offsets[1:])
    cols = []
    for name in ROW_COLUMNS:
        dtype = ROW_DTYPES[name]
        column = table.column(name)
        values = [c.flatten() for c in column.chunks]
        if name == "loss_mask" and constant_mask_as_view and not any(v.null_count for v in values):
            trues = sum(pc.sum(v).as_py() or 0 for v in values)  # a popcount of the bitmaps
            if trues in (0, int(offsets[-1])):  # one value everywhere: no memory, and packers skip its gather
                cols.append(np.broadcast_to(np.bool_(trues > 0), (int(offsets[-1]),)))
                continue
        parts = [np.asarray(values_to_numpy(v), dtype=dtype) for v in values]
        if not parts:
            cols.append(np.zeros(0, dtype=dtype))
        elif len(parts) == 1:
            cols.append(parts[0])
        else:
            cols.append(np.concatenate(parts))
    return cols[0], cols[1], cols[2], offsets


def _values_array(values: np.ndarray) -> pa.Array:
    """A flat numpy column as an Arrow array: zero-copy for numbers; bools packed into Arrow's bitmap with numpy
    (``np.packbits`` is several times faster than ``pa.array`` on a bool array)."""
    if values.dtype != np.bool_:
        return pa.array(values)
    bits = np.packbits(values, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def values_to_numpy(values: pa.Array) -> np.ndarray:
    """A flat Arrow array (e.g. a list column's values) as numpy: zero-copy for numbers; a bool bitmap unpacked with
    numpy (several times faster than Arrow's ``to_numpy`` on bools; a sliced array may start inside a byte). Arrays
    with nulls take Arrow's path.

    Example:
        >>> values_to_numpy(pa.array([True, False, True, True]).slice(1)).tolist()
        [False, True, True]
    """
    if values.type != pa.bool_() or values.null_count:
        return values.to_numpy(zero_copy_only=False)
    n, offset = len(values), values.offset
    if not n:
        return np.zeros(0, dtype=np.bool_)
    first = offset // 8
    bits = np.frombuffer(values.buffers()[1], dtype=np.uint8)[first : (offset + n + 7) // 8]
    return np.unpackbits(bits, bitorder="little")[offset - 8 * first :][:n].view(np.bool_)


def constant_value(values: np.ndarray) -> Any:
    """The one value of a broadcast (stride-0) array, such as :func:`table_to_flat` makes of a constant mask;
    ``None`` for an ordinary array (O(1): it does not read the values).

    Example:
        >>> constant_value(np.broadcast_to(np.True_, (5,))), constant_value(np.ones(5, bool))
        (True, None)
    """
    if values.ndim == 1 and len(values) and values.strides[0] == 0:
        return values[0].item()
    return None
