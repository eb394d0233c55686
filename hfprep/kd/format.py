"""The on-disk format of a hfprep KD cache: columns, fill values, metadata, and Arrow <-> numpy helpers.

A cache is a folder in the Hub layout (``data/<split>-XXXXX-of-YYYYY.parquet`` + ``README.md``). One cache row
per input row (a packed training row), all columns the same length ``L`` along the token axis:

=================  ==============================  ==========================================================
column             Arrow type                      meaning
=================  ==============================  ==========================================================
``input_ids``      ``list<uint32>``                the input row, unchanged
``position_ids``   ``list<uint32>``                restart at 0 at every segment start (padding: 0)
``loss_mask``      ``list<bool>``                  the input row's loss mask, unchanged
``attn_mask``      ``list<uint8>``                 1 on real tokens, 0 on trailing padding (the seed's name)
``target_mask``    ``list<bool>``                  True where row ``t`` has a target: token ``t+1`` is in the
                                                   same segment and not padding
``topk_ids``       ``list<fixed_size_list<uint32>[k]>``   top-k token ids predicted *for position t+1*
``topk_logprobs``  ``list<fixed_size_list<f16|f32>[k]>``  their full-vocabulary log-softmax values, descending
``hidden_L{i}``    ``list<fixed_size_list<f16|u16>[H]>``  optional: ``hidden_states[i]`` of the teacher
=================  ==============================  ==========================================================

Alignment: row ``t`` of ``topk_*`` is the teacher's distribution over the token at ``t+1`` (the same shift as
the logits of a causal LM). Where ``target_mask`` is False (the last token of a segment, the last token of the
row, padding) ``topk_ids`` holds :data:`FILL_ID` and ``topk_logprobs`` holds :data:`FILL_LOGPROB`: finite, and
not 0.0 (which would mean probability 1), so a consumer that forgets the mask gets no NaN and no fake certainty.

Hidden-state convention: ``hidden_L{i}`` is transformers' ``output_hidden_states[i]``: ``i = 0`` is the
embedding output, ``1 <= i < num_layers`` the output of decoder block ``i - 1``, and ``i = num_layers`` the
output of the last block *after* the final norm. ``bfloat16`` hidden states are stored losslessly as their
``uint16`` bit patterns (Parquet has no bf16); :func:`bf16_bits_to_float` turns them back.

Example:
    >>> import numpy as np
    >>> arr = nested_fixed_list(np.arange(12, dtype=np.uint32).reshape(2, 3, 2), np.array([0, 2, 3]))
    >>> arr.type
    ListType(list<item: fixed_size_list<item: uint32>[2]>)
    >>> [len(x) for x in arr.to_pylist()]
    [2, 1]
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Array2D, Features, List, Value

from .. import schema as _schema
from ..errors import DataError
from ..output.layout import SHARD_RE

FORMAT_VERSION = 1
FILL_ID = 0
"""``topk_ids`` where there is no target (a valid id, so a gather never goes out of range)."""
FILL_LOGPROB = -1.0e4
"""``topk_logprobs`` where there is no target: exactly representable in float16, exp() underflows to 0."""
FILL_HIDDEN = 0.0
"""``hidden_L{i}`` on padding tokens."""
ALIGNMENT = "row t predicts token t+1"
NORMALISATION = "log_softmax over the full tokenizer vocabulary (ids 0..vocab_size-1) of teacher logits / temperature"
META_KEY = b"hfprep_kd"
"""Parquet key-value metadata key holding the cache metadata JSON in every shard."""

ROW_COLUMNS = _schema.ROW_COLUMNS

RB_COLUMNS = ("input_ids", "attn_mask", "topk_ids", "topk_logprobs")
"""The response-based columns the seed's ``RBTopKIterableDataset`` yields."""
CACHE_COLUMNS = ("input_ids", "position_ids", "loss_mask", "attn_mask", "target_mask", "topk_ids", "topk_logprobs")

LOGPROB_DTYPES = {"float16": np.float16, "float32": np.float32}
HIDDEN_DTYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}


def hidden_column(layer: int) -> str:
    """Column name of ``hidden_states[layer]``."""
    return f"hidden_L{layer}"


def nested_fixed_list(values: np.ndarray, row_offsets: np.ndarray) -> pa.ListArray:
    """``(N, width)`` values + row offsets (in tokens) -> ``list<fixed_size_list<dtype>[width]>`` with no copy.

    ``values`` may also be ``(rows, L, width)`` for equal-length rows; it is flattened to ``(N, width)``.
    """
    width = values.shape[-1]
    flat = np.ascontiguousarray(values).reshape(-1)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat), width)
    return pa.ListArray.from_arrays(pa.array(np.asarray(row_offsets, dtype=np.int32)), inner)


def flat_list(values: np.ndarray, row_offsets: np.ndarray, type_: pa.DataType | None = None) -> pa.ListArray:
    """Flat token values + row offsets -> ``list<dtype>``."""
    return pa.ListArray.from_arrays(pa.array(np.asarray(row_offsets, dtype=np.int32)), pa.array(values, type=type_))


def list_values_numpy(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``list<X>`` or ``list<fixed_size_list<X>[w]>`` column -> (values, row offsets in tokens), zero-copy.

    For a nested column the values come back as ``(tokens, w)``. Offsets are rebased to start at 0 (sliced
    arrays keep their parent's offsets).
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy()
    start, end = int(offsets[0]), int(offsets[-1])
    child = arr.values
    if pa.types.is_fixed_size_list(child.type):
        width = child.type.list_size
        leaf = child.values.slice((child.offset + start) * width, (end - start) * width)
        vals = leaf.to_numpy(zero_copy_only=leaf.null_count == 0 and not pa.types.is_boolean(leaf.type))
        vals = vals.reshape(-1, width)
    else:
        leaf = child.slice(start, end - start)
        vals = leaf.to_numpy(zero_copy_only=leaf.null_count == 0 and not pa.types.is_boolean(leaf.type))
    return vals, offsets - start


def bf16_bits_to_float(bits: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``uint16`` bit patterns of bfloat16 values -> a ``torch.bfloat16`` tensor (same memory, no rounding).

    Example:
        >>> x = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
        >>> bf16_bits_to_float(x.view(torch.int16).numpy().view(np.uint16)).tolist()
        [1.5, -2.0]
    """
    t = torch.from_numpy(np.asarray(bits).view(np.int16)) if isinstance(bits, np.ndarray) else bits.view(torch.int16)
    return t.view(torch.bfloat16)


def read_meta(schema: pa.Schema) -> dict[str, Any] | None:
    """The cache metadata stored in a shard's Parquet schema, or None when the file is not a hfprep KD cache."""
    meta = schema.metadata or {}
    raw = meta.get(META_KEY)
    return json.loads(raw) if raw is not None else None


def cache_features(k: int, logprob_dtype: str, hidden: dict[int, tuple[int, str]] | None = None):
    """``datasets.Features`` of a cache (``Array2D((None, k))`` for the top-k columns: fast with torch format)."""
    feats = Features(
        {
            "input_ids": List(Value("uint32")),
            "position_ids": List(Value("uint32")),
            "loss_mask": List(Value("bool")),
            "attn_mask": List(Value("uint8")),
            "target_mask": List(Value("bool")),
            "topk_ids": Array2D((None, k), "uint32"),
            "topk_logprobs": Array2D((None, k), logprob_dtype),
        }
    )
    for layer, (width, dtype) in sorted((hidden or {}).items()):
        feats[hidden_column(layer)] = Array2D((None, width), "uint16" if dtype == "bfloat16" else dtype)
    return feats


def check_complete_shards(files: list[str], source: str) -> None:
    """Fail fast when Hub-layout shards ``*-XXXXX-of-YYYYY.parquet`` have gaps or disagree on the count.

    A glob silently returns whatever is there; a missing shard would mean silently training on part of the data.
    """
    groups: dict[tuple[str, int], set[int]] = {}
    for f in files:
        m = SHARD_RE.match(f)
        if m is None:
            continue  # not Hub-layout names: nothing to check against
        groups.setdefault((m["split"], int(m["count"])), set()).add(int(m["index"]))
    prefixes: dict[str, list[int]] = {}
    for (prefix, n), seen in sorted(groups.items()):
        prefixes.setdefault(prefix, []).append(n)
        missing = sorted(set(range(n)) - seen)
        if missing:
            first = f"{prefix}-{missing[0]:05d}-of-{n:05d}.parquet"
            raise DataError(
                f"{source}: {len(missing)} of {n} shards missing, e.g. {first!r}; restore them (a partial copy or "
                "an interrupted download?) or point at a complete folder"
            )
    for prefix, counts in prefixes.items():
        if len(counts) > 1:
            raise DataError(
                f"{source}: shards of {prefix!r} disagree on the shard count ({counts}); two versions of the data "
                "are mixed in one folder, remove the stale files"
            )
