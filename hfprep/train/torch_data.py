"""The seed's plain-PyTorch side: attention masks from positions, ``LMDataset`` and ``collate_lm``.

The mask is the dense (L, L) block-diagonal causal mask; for training with transformers prefer
:class:`hfprep.train.collator.DataCollatorForPackedLM`, which never materialises it.

Example:
    >>> import numpy as np
    >>> make_attention_mask_from_positions(np.array([0, 1, 0], np.uint32)).astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset as HFDataset
from jaxtyping import Bool, UInt32
from torch.utils.data import Dataset

from ..errors import DataError
from ..schema import TokenizedRow, causal_mask_from_positions, segment_ids

LMExample = dict[str, torch.Tensor]
LMExampleBatch = dict[str, torch.Tensor]


def segment_ids_from_positions(position_ids: np.ndarray) -> np.ndarray:
    """Segment index of every token: a segment starts where ``position_ids == 0`` (works on (..., L)).

    The row contract's :func:`hfprep.schema.segment_ids`.
    """
    return segment_ids(np.asarray(position_ids))


def make_attention_mask_from_positions(
    position_ids: UInt32[np.typing.ArrayLike, "*batch seq_len"],
) -> Bool[np.ndarray, "*batch seq_len seq_len"]:
    """Block-diagonal causal mask: token i attends to j iff j <= i and both are in the same segment.

    Segments start where ``position_ids == 0``. Accepts one row (L,) -> (L, L) or a batch (B, L) -> (B, L, L),
    vectorised (no Python loop over rows). The row contract's :func:`hfprep.schema.causal_mask_from_positions`.
    """
    return causal_mask_from_positions(np.asarray(position_ids))


class LMDataset(Dataset):
    """Next-token examples from packed rows (the seed's dataset).

    ``tokens = input_ids[:-1]``, ``labels = input_ids[1:]``, ``loss_mask = loss_mask[1:]``,
    ``position_ids = position_ids[:-1]``, ``attention_mask`` (L, L) from those positions; all torch tensors.

    ``rows`` is a list of row dicts or a ``datasets.Dataset`` (read with the numpy format, no copy to lists).
    With ``attention_mask=False`` items carry no mask and :func:`collate_lm` builds the (bs, L, L) masks of the
    whole batch in one vectorised call instead of one per item.

    Example:
        >>> import numpy as np
        >>> row = {"input_ids": np.array([5, 6, 0, 7], np.uint32), "position_ids": np.array([0, 1, 2, 0], np.uint32),
        ...        "loss_mask": np.ones(4, bool)}
        >>> ex = LMDataset([row])[0]
        >>> ex["tokens"].tolist(), ex["labels"].tolist(), ex["position_ids"].tolist()
        ([5, 6, 0], [6, 0, 7], [0, 1, 2])
    """

    def __init__(self, rows: Sequence[TokenizedRow] | Any, attention_mask: bool = True) -> None:
        super().__init__()
        if isinstance(rows, HFDataset):
            rows = rows.with_format("numpy", columns=["input_ids", "position_ids", "loss_mask"])
        self.rows = rows
        self.attention_mask = attention_mask

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int) -> LMExample:
        record = self.rows[idx]
        ids = np.asarray(record["input_ids"]).astype(np.int64)
        pos = np.asarray(record["position_ids"]).astype(np.int64)
        mask = np.asarray(record["loss_mask"]).astype(np.bool_)
        position_ids = pos[:-1]
        example = {
            "tokens": torch.from_numpy(np.ascontiguousarray(ids[:-1])),
            "labels": torch.from_numpy(np.ascontiguousarray(ids[1:])),
            "loss_mask": torch.from_numpy(np.ascontiguousarray(mask[1:])),
            "position_ids": torch.from_numpy(np.ascontiguousarray(position_ids)),
        }
        if self.attention_mask:
            example["attention_mask"] = torch.from_numpy(make_attention_mask_from_positions(position_ids))
        return example


def collate_lm(batch: list[LMExample]) -> LMExampleBatch:
    """Stack ``LMDataset`` examples: (bs, L) tensors and an (bs, L, L) attention mask.

    When the examples carry no ``attention_mask`` (``LMDataset(..., attention_mask=False)``), the masks of the
    whole batch are built at once from the stacked ``position_ids`` (no Python loop over rows).

    Example:
        >>> ex = {"tokens": torch.tensor([1, 2]), "position_ids": torch.tensor([0, 0])}
        >>> collate_lm([ex, ex])["attention_mask"].shape
        torch.Size([2, 2, 2])
    """
    if not batch:
        raise DataError("collate_lm got an empty batch")
    lengths = {len(ex["tokens"] if "tokens" in ex else next(iter(ex.values()))) for ex in batch}
    if len(lengths) > 1:
        raise DataError(
            f"collate_lm: examples of unequal length {sorted(lengths)} cannot be stacked; pack the rows to one "
            "seq_len (hfprep's padded packers and dense do) or use DataCollatorForPackedLM(padding=True, ...)"
        )
    out = {k: torch.stack([ex[k] for ex in batch]) for k in batch[0]}
    if "attention_mask" not in out:
        out["attention_mask"] = torch.from_numpy(make_attention_mask_from_positions(out["position_ids"].numpy()))
    return out
