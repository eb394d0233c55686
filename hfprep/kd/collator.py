"""Collate KD-cache rows for ``transformers.Trainer``: student inputs + labels, and the cache aligned to logits.

Output of :class:`DataCollatorForKD` for a batch of B rows (padded to the longest row, L):

* ``input_ids`` (B, L) int64, ``position_ids`` (B, L) int64 (restart at 0 per document). No ``attention_mask``:
  transformers derives the block-diagonal mask from ``position_ids`` only when there is none (and no KV cache:
  :class:`~hfprep.kd.trainer.KDTrainer` calls the model with ``use_cache=False``).
* ``labels`` (B, L): transformers' convention (not pre-shifted; ``logits[:, t]`` predicts ``labels[:, t+1]``),
  ``-100`` where ``loss_mask`` is False, at every segment start (no loss on predicting a document's first token
  from the previous document) and on padding.
* ``teacher_topk_ids`` (B, L, k) int64, ``teacher_topk_logprobs`` (B, L, k) float32 and ``teacher_mask`` (B, L)
  bool: the cache is already aligned with ``logits[:, t]`` (row t predicts t+1), and
  ``teacher_mask[:, t] == (labels[:, t+1] != -100) & target_mask[:, t]``: the KD loss covers exactly the
  positions the CE loss covers.

Example:
    >>> import torch
    >>> row = {"input_ids": torch.tensor([5, 6, 7, 0]), "position_ids": torch.tensor([0, 1, 0, 0]),
    ...        "loss_mask": torch.tensor([True, True, True, False]),
    ...        "topk_ids": torch.zeros(4, 2, dtype=torch.long), "topk_logprobs": torch.zeros(4, 2)}
    >>> b = DataCollatorForKD()([row])
    >>> b["labels"].tolist(), b["teacher_mask"].tolist()
    ([[-100, 6, -100, -100]], [[True, False, False, False]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import DataError
from ..train.model_check import check_batch_ids, check_vocab_size_arg
from .format import FILL_ID, FILL_LOGPROB

TEACHER_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_mask")


@dataclass
class DataCollatorForKD:
    """Pad/stack KD rows (from :class:`~hfprep.kd.readers.RBTopKIterableDataset` or ``load_kd_dataset``).

    Rows need ``input_ids``, ``topk_ids``, ``topk_logprobs``; ``position_ids``, ``loss_mask`` and
    ``target_mask`` are used when present (hfprep caches have them). Without ``position_ids`` a row is one
    document; without ``loss_mask`` every non-padding token has loss (``attn_mask`` marks padding).

    ``vocab_size`` (the student's, ``model.get_input_embeddings().num_embeddings``): every batch's ``input_ids``
    and teacher top-k ids must lie in ``0..vocab_size-1``, else a one-line ``DataError`` instead of an
    ``IndexError`` in the embedding or the KD loss's gather. :class:`~hfprep.kd.trainer.KDTrainer` sets it from
    its model when left None.
    """

    pad_token_id: int = 0
    label_pad: int = -100
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        check_vocab_size_arg(self.vocab_size)

    def __call__(self, rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise DataError("DataCollatorForKD got an empty batch")
        for c in ("input_ids", "topk_ids", "topk_logprobs"):
            if c not in rows[0]:
                raise DataError(
                    f"KD row lacks {c!r} (has {sorted(rows[0])}); read the cache with RBTopKIterableDataset"
                )
        B, L = len(rows), max(len(r["input_ids"]) for r in rows)
        k = rows[0]["topk_ids"].shape[-1]
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((B, L), dtype=torch.long)
        loss = torch.zeros((B, L), dtype=torch.bool)
        target = torch.zeros((B, L), dtype=torch.bool)
        top_ids = torch.full((B, L, k), FILL_ID, dtype=torch.long)
        top_lp = torch.full((B, L, k), FILL_LOGPROB, dtype=torch.float32)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            if r["topk_ids"].shape != (n, k) or r["topk_logprobs"].shape != (n, k):
                raise DataError(
                    f"KD row {b}: topk_ids {tuple(r['topk_ids'].shape)} / topk_logprobs "
                    f"{tuple(r['topk_logprobs'].shape)} do not match ({n}, {k}); the cache is corrupt or mixed"
                )
            ids[b, :n] = torch.as_tensor(r["input_ids"]).long()
            real = torch.as_tensor(r["attn_mask"]).bool() if "attn_mask" in r else torch.ones(n, dtype=torch.bool)
            if "position_ids" in r:
                pos[b, :n] = torch.as_tensor(r["position_ids"]).long()
            else:
                pos[b, :n] = torch.arange(n)
            loss[b, :n] = (torch.as_tensor(r["loss_mask"]).bool() if "loss_mask" in r else real) & real
            if "target_mask" in r:
                target[b, :n] = torch.as_tensor(r["target_mask"]).bool()
            else:
                target[b, : n - 1] = (pos[b, 1:n] > 0) & real[1:] & real[:-1]
            top_ids[b, :n] = r["topk_ids"].long()
            top_lp[b, :n] = r["topk_logprobs"].float()
        if self.vocab_size is not None:
            check_batch_ids(ids, self.vocab_size)
            check_batch_ids(top_ids, self.vocab_size, "topk_ids")
        has_label = loss & (pos > 0)
        labels = torch.where(has_label, ids, torch.full_like(ids, self.label_pad))
        teacher_mask = torch.zeros_like(target)
        teacher_mask[:, :-1] = target[:, :-1] & has_label[:, 1:]
        return {
            "input_ids": ids,
            "position_ids": pos,
            "labels": labels,
            "teacher_topk_ids": top_ids,
            "teacher_topk_logprobs": top_lp,
            "teacher_mask": teacher_mask,
        }
