"""Commands over a prepared dataset's ``documents`` config: ``hfprep repack`` and ``hfprep export``.

* :mod:`~hfprep.commands.prepared`: a prepared dataset to read (a local folder or a Hub repo at one commit), its
  card and its documents shards, fetched one at a time;
* :mod:`~hfprep.commands.staging`: the resumable staging folder next to an output (finished shards are kept
  across a killed run; the output appears at the end, whole);
* :mod:`~hfprep.commands.repack`: pack the documents again at another ``seq_len`` / packer (no tokenizer, no
  source), byte-identical to a fresh ``hfprep run``;
* :mod:`~hfprep.commands.export`: Megatron-LM's indexed dataset or a flat token file for other trainers.
"""
