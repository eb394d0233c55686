"""``KDTrainer``: ``transformers.Trainer`` whose loss mixes cross-entropy with a KD loss on the cached top-k.

``loss = kd_alpha * KD + (1 - kd_alpha) * CE``. The KD term is :func:`hfprep.kd.losses.kd_loss` over
``teacher_mask`` positions (see :class:`~hfprep.kd.collator.DataCollatorForKD`). The model is called with
``use_cache=False``: with a KV cache transformers silently stops deriving the block-diagonal mask from
``position_ids`` and packed documents attend to each other (measured with transformers 5.23 on Llama).
Use ``remove_unused_columns=False`` when the train dataset is a ``datasets.Dataset`` (its cache columns are not
model arguments). A :class:`~hfprep.kd.collator.DataCollatorForKD` without a ``vocab_size`` gets the student's, so
a cache made for another vocabulary fails on the first batch, in one line, before any step (pass
``callbacks=[ModelCheckCallback(cache_folder)]`` to scan the whole cache before training instead).

Example:
    >>> trainer = KDTrainer(model=student, args=args, train_dataset=RBTopKIterableDataset(glob),
    ...                     data_collator=DataCollatorForKD(), kd_alpha=0.5, kd_kind="forward")  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from transformers import Trainer

from ..errors import ConfigError
from ..train.model_check import model_vocab_size
from .collator import TEACHER_KEYS, DataCollatorForKD
from .losses import Mode, kd_loss


class KDTrainer(Trainer):
    """Trainer with a KD loss on cached teacher top-k log-probs; ``kd_losses`` records the KD term per step."""

    def __init__(
        self,
        *args: Any,
        kd_alpha: float = 1.0,
        kd_kind: Literal["forward", "reverse"] = "forward",
        kd_mode: Mode = "renorm",
        kd_temperature: float = 1.0,
        teacher_temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= kd_alpha <= 1.0:
            raise ConfigError(f"kd_alpha must be in [0, 1], got {kd_alpha}")
        super().__init__(*args, **kwargs)
        if isinstance(self.data_collator, DataCollatorForKD) and self.data_collator.vocab_size is None:
            # A copy: the caller's collator object stays as it was given.
            self.data_collator = dataclasses.replace(self.data_collator, vocab_size=model_vocab_size(self.model))
        self.kd_alpha, self.kd_kind, self.kd_mode = kd_alpha, kd_kind, kd_mode
        self.kd_temperature, self.teacher_temperature = kd_temperature, teacher_temperature
        self.kd_losses: list[float] = []

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        missing = [k for k in TEACHER_KEYS if k not in inputs]
        if missing:
            raise ConfigError(f"KDTrainer batch lacks {missing}; use data_collator=DataCollatorForKD()")
        ids, lps, mask = (inputs.pop(k) for k in TEACHER_KEYS)
        outputs = model(**inputs, use_cache=False)
        kd = kd_loss(
            outputs.logits,
            ids,
            lps,
            mask,
            kind=self.kd_kind,
            mode=self.kd_mode,
            temperature=self.kd_temperature,
            teacher_temperature=self.teacher_temperature,
        )
        loss = self.kd_alpha * kd
        if self.kd_alpha < 1.0:
            loss = loss + (1.0 - self.kd_alpha) * outputs.loss
        if model.training:
            self.kd_losses.append(float(kd.detach()))
        return (loss, outputs) if return_outputs else loss
