"""Tokenization stage. Takes raw rows and a tokenizer; gives tokenized documents as flat arrays
(``input_ids`` uint32, ``position_ids`` uint32, ``loss_mask`` bool, document offsets: see :mod:`hfprep.schema`).

* :mod:`~hfprep.tokenization.loading`: load or train a tokenizer, its special tokens and fingerprint.
* :mod:`~hfprep.tokenization.backends`: the encoders (``hf``, the fast ``gigatoken``) and the exactness guard.
* :mod:`~hfprep.tokenization.pieces`: :class:`~hfprep.tokenization.pieces.FlatRows` and the piece assembly.
* :mod:`~hfprep.tokenization.fim`, :mod:`~hfprep.tokenization.chat`: what is special about FIM and chat rows.
* :mod:`~hfprep.tokenization.stage`: ``TokenizeConfig`` and the batched stage every engine runs (``Tokenizer``,
  ``tokenize_batch``), plus the seed's row functions.
"""
