"""Training side. Takes a prepared dataset; gives batches for PyTorch / transformers.

* :mod:`~hfprep.train.collator`: ``DataCollatorForPackedLM`` (padding-free or padded batches, block-causal masks).
* :mod:`~hfprep.train.torch_data`: the seed's ``LMDataset`` / ``collate_lm``.
* :mod:`~hfprep.train.model_check`: ``check_dataset_for_model`` (token ids vs the model's vocabulary, the card's
  tokenizer fingerprint vs a tokenizer), run before step one by :mod:`~hfprep.train.callbacks`'
  ``ModelCheckCallback``.

The block-causal mask itself is :func:`hfprep.schema.causal_mask_from_positions` (one definition for every user).
"""
