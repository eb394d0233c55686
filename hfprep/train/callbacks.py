"""``transformers.Trainer`` callbacks: :class:`ModelCheckCallback` checks the data against the model before step one.

Example:
    >>> trainer = Trainer(model, args, train_dataset=ds, data_collator=DataCollatorForPackedLM(),
    ...                   callbacks=[ModelCheckCallback("out/quickstart", tokenizer=tok)])  # doctest: +SKIP
    >>> trainer.train()  # a dataset made for another vocabulary or tokenizer fails here, in one line  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from .model_check import ModelCheck, check_dataset_for_model


class ModelCheckCallback(TrainerCallback):
    """Run :func:`~hfprep.train.model_check.check_dataset_for_model` in ``on_train_begin``: after the Trainer has
    set up the model and the data loader, before the first batch is drawn and before any optimizer step.

    Args:
        data: what to scan: the folder ``hfprep run`` wrote (its card gives the tokenizer fingerprint), a
            ``datasets.Dataset``, or None for the Trainer's own train dataset.
        tokenizer: optional; compared with the dataset card's tokenizer fingerprint (needs a card: ``data`` as the
            folder, or ``card=``).
        card: the prepared folder (or its ``README.md``) when ``data`` is a ``Dataset`` and ``tokenizer`` is given.

    After training starts, :attr:`result` holds the :class:`~hfprep.train.model_check.ModelCheck`.
    """

    def __init__(self, data: Any = None, tokenizer: Any = None, card: str | os.PathLike | None = None) -> None:
        self.data, self.tokenizer, self.card = data, tokenizer, card
        self.result: ModelCheck | None = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        data = self.data if self.data is not None else getattr(train_dataloader, "dataset", None)
        self.result = check_dataset_for_model(data, model, self.tokenizer, card=self.card)
        return control
